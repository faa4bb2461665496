"""VAE latent distributions of fixed images, computed once and cached on disk.

The key covers the image bytes, the resolution, the resize policy and the VAE's identity,
so an edited image, another resolution or another backbone never reads a stale entry
(files are written atomically by :class:`relgen.data.cache.TensorCache`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch



def latent_dists(backbone, paths: Sequence[Path], resolution: int, use_disk_cache: bool = True,
                 batch_size: int = 4, resample: str = "bicubic") -> torch.Tensor:
    """Posterior parameters (N, 2C, h, w) of ``paths`` resized to ``resolution`` (no crop, no flip)."""
    from relgen.backbones.base import cache_root
    from relgen.data.cache import TensorCache, cache_key
    from relgen.data.images import image_digest, load_image

    cache = TensorCache(cache_root(backbone.cache_dir) / "latents") if use_disk_cache else None
    keys = [cache_key(image_digest(p), resolution, f"{resample}-resize-nocrop-noflip", backbone.identity, "vae") for p in paths]
    out: list[Optional[torch.Tensor]] = [None] * len(paths)
    todo = []
    for i, key in enumerate(keys):
        hit = cache.get(key) if cache else None
        if hit is not None:
            out[i] = hit["dist"]
        else:
            todo.append(i)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        pixels = torch.stack([load_image(paths[i], resolution, resample=resample) for i in chunk])
        dists = backbone.encode_latent_dist(pixels).cpu()
        for i, dist in zip(chunk, dists):
            out[i] = dist.clone()
            if cache:
                cache.put(keys[i], {"dist": out[i]})
    return torch.stack(out)  # type: ignore[arg-type]
