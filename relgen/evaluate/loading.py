"""Loading metric models: device, dtype, and ``from_pretrained`` with a one-line error."""

from __future__ import annotations

from typing import Any, Optional

import torch

from relgen.errors import ConfigError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when one is present, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"eval.device='{spec}' is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"eval.device='{spec}' but no CUDA device is present; use eval.device=cpu")
    return device


def torch_dtype(name: str, key: str) -> torch.dtype:
    """The torch dtype named by ``eval.<key>.dtype``."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"eval.{key}.dtype='{name}' is not one of {sorted(_DTYPES)}") from None


def from_pretrained(loader: Any, pretrained: str, key: str, revision: Optional[str] = None, **kwargs) -> Any:
    """``loader.from_pretrained(pretrained, ...)`` that fails with one line naming the model and
    the ``eval.<key>.pretrained=`` override when the weights cannot be found."""
    if not pretrained:
        raise ConfigError(f"eval.{key}.pretrained is empty; set eval.{key}.pretrained= to a hub id or a local folder")
    try:
        return loader.from_pretrained(pretrained, revision=revision, **kwargs)
    except (OSError, ValueError) as exc:  # transformers raises OSError for missing files/hub
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"eval.{key}.pretrained='{pretrained}': cannot load {getattr(loader, '__name__', loader)} "
                          f"({first}); download the weights or set eval.{key}.pretrained= to a local folder") from exc


def check_metric_weights(name: str, metric_cls: Any, eval_cfg: Any) -> None:
    """Fail at once, before anything renders, when a metric's weights cannot be had: a local
    folder or file that is not there, or a hub id neither in the Hugging Face cache nor on a
    reachable hub (the check training makes for its backbone, :func:`relgen.hub.check_hub_source`).

    Raises:
        ConfigError: naming ``eval.<key>.pretrained`` (or ``eval.fid.inception_weights``).
    """
    from pathlib import Path

    from relgen.hub import check_hub_source

    key = getattr(metric_cls, "config_key", "")
    cfg = getattr(eval_cfg, key, None) if key else None
    if cfg is None:
        return
    if key == "fid" and getattr(cfg, "features", "") == "inception":
        weights = getattr(cfg, "inception_weights", None)
        if not weights:
            raise ConfigError(f"metric {name}: eval.fid.inception_weights is not set; give the Inception v3 weights "
                              "file (torch-fidelity's weights-inception-2015-12-05-*.pth), or use eval/fid=dinov2")
        if not Path(weights).expanduser().is_file():
            raise ConfigError(f"metric {name}: eval.fid.inception_weights={weights}: file not found")
        return
    pretrained = getattr(cfg, "pretrained", None)
    if pretrained is None:
        return  # a metric without model weights (relworld's detector)
    if not pretrained:
        raise ConfigError(f"metric {name}: eval.{key}.pretrained is empty; set it to a hub id or a local folder")
    local = Path(pretrained).expanduser()
    if local.exists():
        return
    if pretrained.startswith(("/", ".", "~")) or pretrained.count("/") > 1:
        raise ConfigError(f"metric {name}: eval.{key}.pretrained={pretrained}: no such folder; give a local folder "
                          "of the model (save_pretrained layout) or a hub id")
    check_hub_source(f"metric {name}: eval.{key}.pretrained", pretrained, getattr(cfg, "revision", None),
                     "config.json", hint=f"download it once with network (huggingface-cli download {pretrained}) or "
                                         f"set eval.{key}.pretrained= to a local folder; nothing was rendered")


_MODELS: dict[tuple, Any] = {}


def shared_model(kind: str, cfg: Any, key: str, device: torch.device, build) -> Any:
    """One loaded model per (kind, weights, dtype, device): CLIP-T, CLIP-R and CLIP-I share one
    CLIP. ``build()`` loads it on a miss. The returned wrapper takes the caller's ``cfg``, so
    settings that do not change the weights (thresholds, batch sizes) are the caller's own."""
    ident = (kind, cfg.pretrained, getattr(cfg, "revision", None), getattr(cfg, "dtype", "float32"), str(device))
    if ident not in _MODELS:
        _MODELS[ident] = build()
    model = _MODELS[ident]
    model.cfg = cfg
    return model


def release_models() -> None:
    """Forget every shared model (frees their memory once nothing else holds them)."""
    _MODELS.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def crop(image: Any, box: Optional[tuple[float, float, float, float]]) -> Any:
    """``image`` cropped to ``box`` (pixels, clamped to the image); the whole image for ``None``."""
    if box is None:
        return image
    w, h = image.size
    x0, y0, x1, y1 = (max(0, min(w, int(round(box[0])))), max(0, min(h, int(round(box[1])))),
                      max(0, min(w, int(round(box[2])))), max(0, min(h, int(round(box[3])))))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return image
    return image.crop((x0, y0, x1, y1))
