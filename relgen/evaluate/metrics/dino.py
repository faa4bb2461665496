"""DINO image-reference similarity (DreamBooth's DINO score, Ruiz et al. 2023; RelationBooth's
DINO column): ``scale * cos`` of the class-token embeddings of the image and each entity's
reference images (box crops when known), averaged over references, then entities."""

from __future__ import annotations

from typing import Any

import torch

from relgen.evaluate.loading import from_pretrained, shared_model, torch_dtype
from relgen.evaluate.metrics.base import SCORE, Metric, batched, register_metric
from relgen.evaluate.metrics.clip import reference_similarity
from relgen.evaluate.samples import ImageScore, Sample


class ClassTokenEmbedder:
    """A ViT (DINO, DINOv2) returning unit-norm class-token embeddings.

    Args:
        cfg: :class:`~relgen.evaluate.config.DinoConfig` (or any node with ``pretrained``,
            ``revision``, ``dtype``, ``batch_size``).
        device: Where it runs.
        key: The config key named in errors.
    """

    def __init__(self, cfg: Any, device: torch.device, key: str = "dino"):
        from transformers import AutoImageProcessor, AutoModel

        self.cfg = cfg
        self.device = device
        self.dtype = torch_dtype(cfg.dtype, key)
        self.model = from_pretrained(AutoModel, cfg.pretrained, key, getattr(cfg, "revision", None), dtype=self.dtype)
        self.model.to(device).eval()
        self.processor = from_pretrained(AutoImageProcessor, cfg.pretrained, key, getattr(cfg, "revision", None))

    @torch.no_grad()
    def features(self, images: list[Any]) -> torch.Tensor:
        """``[N, D]`` class-token embeddings (float32, CPU), not normalised."""
        out = []
        for chunk in batched(images, self.cfg.batch_size):
            pixels = self.processor(images=[im.convert("RGB") for im in chunk], return_tensors="pt")["pixel_values"]
            hidden = self.model(pixel_values=pixels.to(self.device, self.dtype)).last_hidden_state
            out.append(hidden[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)

    def images(self, images: list[Any]) -> torch.Tensor:
        """``[N, D]`` unit-norm class-token embeddings."""
        return torch.nn.functional.normalize(self.features(images), dim=-1)


@register_metric
class Dino(Metric):
    """Image-reference DINO similarity per entity."""

    name = "dino"
    outputs = {"dino": SCORE}
    config_key = "dino"
    needs_references = True

    def score(self, samples: list[Sample]) -> list[ImageScore]:
        model = shared_model("dino", self.cfg, "dino", self.device, lambda: ClassTokenEmbedder(self.cfg, self.device))
        values = reference_similarity(samples, model.images, self.cfg.scale)
        return [ImageScore({"dino": v}, verdict="D -" if v is None else f"D {v:.1f}") for v in values]
