"""Built-in backbones. Each name loads through :func:`relgen.backbones.loading.load_backbone`."""

from relgen.registry import register_backbone

_LOADER = "relgen.backbones.loading:load_backbone"

#: The backbones pretrained on relworld, whose images relworld's exact detector reads.
RELWORLD_BACKBONES = frozenset({"relworld", "relworld3"})

for _name, _summary in [
    ("sd15", "Stable Diffusion 1.5 (512 px, epsilon, CLIP ViT-L text encoder)"),
    ("sd21_base", "Stable Diffusion 2.1-base (512 px, epsilon, OpenCLIP ViT-H, '!' padding)"),
    ("sd21", "Stable Diffusion 2.1 (768 px, v-prediction, OpenCLIP ViT-H, '!' padding)"),
    ("sdxl", "Stable Diffusion XL base 1.0 (1024 px, two text encoders, pooled embedding, time ids)"),
    ("tiny_sd15", "random tiny weights with SD 1.5's structure (offline tests and smoke runs)"),
    ("tiny_sd21", "random tiny weights with SD 2.1's structure (v-prediction, '!' padding)"),
    ("tiny_sdxl", "random tiny weights with SDXL's structure (two encoders, time ids)"),
    ("relworld", "micro SD 1.5-structured model pretrained on the relation world (64 px, shipped)"),
    ("relworld3", "relworld fine-tuned on world 3: inside named, shapes sometimes named alone (64 px, shipped)"),
]:
    register_backbone(_name, _LOADER, summary=_summary)
