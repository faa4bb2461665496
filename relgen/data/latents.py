"""VAE latent distributions of fixed images, computed once and cached on disk.

The key covers the image bytes, the resolution, the resize policy and the VAE's identity,
so an edited image, another resolution or another backbone never reads a stale entry
(files are written atomically by :class:`relgen.data.cache.TensorCache`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch



#: How :func:`latent_dists` turns a file into pixels: ``pil`` = :func:`relgen.data.images.load_image`
#: (a PIL resize, as ReVersion's released dataset code), ``vae_processor`` =
#: :func:`relgen.data.images.load_image_vae_processor` (diffusers' ``VaeImageProcessor``, as RRNet's).
LOADERS = ("pil", "vae_processor")


def latent_dists(backbone, paths: Sequence[Path], resolution: int, use_disk_cache: bool = True,
                 batch_size: int = 4, resample: str = "bicubic", loader: str = "pil") -> torch.Tensor:
    """Posterior parameters (N, 2C, h, w) of ``paths`` resized to ``resolution`` (no crop, no flip).

    ``resample`` is the PIL filter and ``loader`` one of :data:`LOADERS`; both are in the cache key.
    """
    from relgen.backbones.base import cache_root
    from relgen.data.cache import TensorCache, cache_key
    from relgen.data.images import image_digest, load_image, load_image_vae_processor

    if loader not in LOADERS:
        raise ValueError(f"unknown image loader '{loader}'; use one of {', '.join(LOADERS)}")
    policy = f"{resample}-resize-nocrop-noflip"
    if loader == "vae_processor":
        policy = f"vae-processor-{backbone.vae_scale}-{policy}"

    def pixels_of(path: Path) -> torch.Tensor:
        if loader == "vae_processor":
            return load_image_vae_processor(path, resolution, resample=resample, vae_scale_factor=backbone.vae_scale)
        return load_image(path, resolution, resample=resample)

    cache = TensorCache(cache_root(backbone.cache_dir) / "latents") if use_disk_cache else None
    keys = [cache_key(image_digest(p), resolution, policy, backbone.identity, "vae") for p in paths]
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
        pixels = torch.stack([pixels_of(paths[i]) for i in chunk])
        dists = backbone.encode_latent_dist(pixels).cpu()
        for i, dist in zip(chunk, dists):
            out[i] = dist.clone()
            if cache:
                cache.put(keys[i], {"dist": out[i]})
    return torch.stack(out)  # type: ignore[arg-type]
