"""Fréchet distance between the generated images of a condition and a reference folder.

The distance is torchmetrics' :class:`~torchmetrics.image.fid.FrechetInceptionDistance`
(Heusel et al. 2017: ``|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))``) in float64.
Features:

* ``inception`` (FID): torchmetrics' TF-compatible Inception v3 (from torch-fidelity), with the
  weights file given by ``eval.fid.inception_weights`` (a release file, not a hub model);
* ``dino``: the class token of a DINOv2 model from transformers (the FD-DINOv2 of Stein et al.
  2023), which needs no extra package.

Every image is resized to 299 x 299 with PIL's bicubic filter before feature extraction (the
resizing clean-fid recommends, Parmar et al. 2022), so generated and reference images of any
size are treated alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from relgen.errors import ConfigError, DataError
from relgen.evaluate.images import list_images, open_rgb
from relgen.evaluate.metrics.base import SCORE, Metric, register_metric
from relgen.evaluate.samples import Sample

#: Side of the square every image is resized to (Inception v3's input size).
FID_SIZE = 299


def to_uint8_batch(images: list[Any], size: int = FID_SIZE) -> torch.Tensor:
    """``uint8 [N, 3, size, size]`` from PIL images (bicubic resize)."""
    from PIL import Image

    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class DinoFeatures(torch.nn.Module):
    """``uint8 [N, 3, H, W]`` -> DINO class-token features, for torchmetrics' custom-feature path."""

    def __init__(self, cfg: Any, device: torch.device):
        super().__init__()
        from relgen.evaluate.metrics.dino import ClassTokenEmbedder

        self.embedder = ClassTokenEmbedder(cfg, device, key="fid")
        self.num_features = int(self.embedder.model.config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        images = [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in x]
        return self.embedder.features(images).double()


def inception_metric(cfg: Any):
    """torchmetrics' FID with the Inception v3 weights file of ``eval.fid.inception_weights``."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not cfg.inception_weights:
        raise ConfigError("eval.fid.inception_weights is not set; give the Inception v3 weights file "
                          "(weights-inception-2015-12-05-6726825d.pth from torch-fidelity's releases), "
                          "or use eval.fid.features=dino")
    if not Path(cfg.inception_weights).expanduser().is_file():
        raise ConfigError(f"eval.fid.inception_weights={cfg.inception_weights}: file not found")
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ConfigError("eval.fid.features=inception needs torch-fidelity (pip install 'relgen[fid]', which "
                          "also brings torchvision); or use eval.fid.features=dino")
    return FrechetInceptionDistance(feature=cfg.feature_dim, normalize=False,
                                    feature_extractor_weights_path=str(Path(cfg.inception_weights).expanduser()))


@register_metric
class Fid(Metric):
    """Fréchet distance of each condition's images to ``eval.fid.reference_dir``.

    Args:
        cfg: :class:`~relgen.evaluate.config.FidConfig`.
        device: Where the feature model runs.
        feature: A feature module (``uint8 [N, 3, 299, 299] -> [N, D]``) to use instead of the
            configured one.
    """

    name = "fid"
    outputs = {"fid": SCORE}
    config_key = "fid"
    per_image = False

    def __init__(self, cfg: Any, device: Optional[torch.device] = None, feature: Optional[torch.nn.Module] = None):
        super().__init__(cfg, device)
        self._feature = feature
        self._metric = None
        self._reference_key: Optional[tuple] = None

    def _build(self):
        from torchmetrics.image.fid import FrechetInceptionDistance

        if self._feature is not None:
            metric = FrechetInceptionDistance(feature=self._feature, reset_real_features=False)
        elif self.cfg.features == "dino":
            metric = FrechetInceptionDistance(feature=DinoFeatures(self.cfg, self.device), reset_real_features=False)
        elif self.cfg.features == "inception":
            metric = inception_metric(self.cfg)
            metric.reset_real_features = False
        else:
            raise ConfigError(f"eval.fid.features='{self.cfg.features}' is not one of ['dino', 'inception']")
        metric.set_dtype(torch.float64)
        return metric.to(self.device)

    def reference_paths(self) -> list[Path]:
        if not self.cfg.reference_dir:
            raise ConfigError("metric fid needs eval.fid.reference_dir= (a folder of reference images, "
                              "e.g. COCO val2017)")
        paths = list_images(self.cfg.reference_dir, "eval.fid.reference_dir")
        return paths[: self.cfg.max_reference] if self.cfg.max_reference > 0 else paths

    def _update(self, images: list[Any], real: bool) -> None:
        for start in range(0, len(images), max(1, self.cfg.batch_size)):
            self._metric.update(to_uint8_batch(images[start:start + self.cfg.batch_size]).to(self.device), real=real)

    def score_set(self, samples: list[Sample]) -> dict[str, float]:
        if len(samples) < 2:
            raise DataError(f"metric fid needs at least 2 generated images per condition, got {len(samples)}")
        if self._metric is None:
            self._metric = self._build()
        paths = self.reference_paths()
        key = tuple(str(p) for p in paths)
        if key != self._reference_key:  # reference statistics are computed once per folder
            if len(paths) < 2:
                raise DataError(f"eval.fid.reference_dir={self.cfg.reference_dir}: at least 2 images are needed")
            self._metric.reset_real_features = True
            self._metric.reset()
            self._metric.reset_real_features = False
            for start in range(0, len(paths), max(1, self.cfg.batch_size)):
                self._update([open_rgb(p) for p in paths[start:start + self.cfg.batch_size]], real=True)
            self._reference_key = key
        else:
            self._metric.reset()  # fake statistics only (reset_real_features is False)
        self._update([s.image for s in samples], real=False)
        return {"fid": float(self._metric.compute()), "n": len(samples), "n_reference": len(paths)}
