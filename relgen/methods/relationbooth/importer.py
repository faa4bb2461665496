"""Import RelationBooth's official checkpoints: MS-Diffusion's ``ms_adapter.bin`` (the image
branch alone) and DreamRelation's LoRA (on top of that branch).

    python -m relgen.import_official method=relationbooth file=ms_adapter.bin backbone=sdxl run_dir=runs/ms
    python -m relgen.import_official method=relationbooth file=dreamrelation_lora.safetensors \\
        method.ms_adapter=ms_adapter.bin method.relation_name=hug backbone=sdxl run_dir=runs/hug
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from relgen.atomic import write_json, write_with
from relgen.backbones.configs import unet_cross_attention_dim, unet_skeleton
from relgen.errors import ConfigError, RelgenError
from relgen.methods.relationbooth.artifact import (
    BRANCH_ROLE,
    DEFAULT_RELATION_NAME,
    LORA_ROLE,
    SPEC_FILE,
    SPEC_ROLE,
    RelationBoothArtifact,
    export_names,
)
from relgen.methods.relationbooth.convert import (
    check_adapter_fits_unet,
    check_adapter_layout,
    check_lora_fits_unet,
    load_ms_adapter,
    read_adapter_file,
)
from relgen.plugin import Exporter
from relgen.tensorfile import check_finite


def official_exporter(cfg, file: Path) -> Exporter:
    """``relgen.import_official`` for RelationBooth: MS-Diffusion's ``ms_adapter.bin`` alone, or
    DreamRelation's LoRA ``.safetensors`` on that branch (``method.ms_adapter=``), each checked
    against the backbone's UNet built from its config; returns the function that writes the
    export (``relationbooth-<name>-branch.safetensors``, ``-lora.safetensors``, the spec)."""
    m = cfg.method
    unet = unet_skeleton(cfg.backbone, cfg.cache_dir)
    if file.suffix == ".safetensors":  # DreamRelation's LoRA, on top of MS-Diffusion's branch
        try:
            lora = load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise RelgenError(f"{file}: cannot be read as a safetensors LoRA ({exc})") from exc
        check_finite(lora, file, "DreamRelation LoRA")
        if not any("lora" in k for k in lora):
            raise RelgenError(f"{file}: holds no LoRA weights (no 'lora' keys); give DreamRelation's "
                              "pytorch_lora_weights.safetensors, or MS-Diffusion's ms_adapter.bin alone")
        if not m.ms_adapter:
            raise ConfigError(f"{file}: DreamRelation's LoRA runs on MS-Diffusion's image branch; add "
                              "method.ms_adapter=<path of ms_adapter.bin>")
        lora_file, adapter_file = file, Path(m.ms_adapter).expanduser()
        if not adapter_file.is_file():
            raise ConfigError(f"method.ms_adapter={adapter_file}: file not found (give MS-Diffusion's ms_adapter.bin)")
        if unet is not None:
            check_lora_fits_unet(lora, unet, str(file))
    else:
        lora_file, adapter_file = None, file
    raw = read_adapter_file(adapter_file)
    check_adapter_layout(raw, str(adapter_file))
    cond = unet_cross_attention_dim(cfg.backbone, cfg.cache_dir)
    dummy = raw["dummy_image_tokens"]
    if cond is not None and dummy.shape[-1] != cond:
        raise RelgenError(f"{adapter_file}: its image tokens are {dummy.shape[-1]}-wide but backbone "
                          f"{cfg.backbone.name}'s UNet takes {cond}-wide conditioning")
    if unet is not None:  # the per-processor image key/value weights, as apply() will load them
        check_adapter_fits_unet(load_ms_adapter(raw, list(unet.attn_processors), source=str(adapter_file)), unet,
                                str(adapter_file))
    art = RelationBoothArtifact.from_official(lora_file or adapter_file, adapter_file, m.image_encoder,
                                              m.clipself_checkpoint, m.resampler_heads, m.scale,
                                              {"negative_prompt": m.negative_prompt,
                                               "default_box_y": list(m.default_box_y)})

    # relationbooth-<relation>-lora.safetensors etc.; an official file names no relation: method.relation_name
    names = export_names(m.relation_name or DEFAULT_RELATION_NAME, m.name)

    def export(out: Path) -> dict[str, Path]:
        # DreamRelation's copy prefixes the resampler's keys with "resampler."; the export holds MS-Diffusion's names
        proj = {k[len("resampler."):] if k.startswith("resampler.") else k: v for k, v in raw["image_proj"].items()}
        flat = {f"image_proj.{k}": v.contiguous() for k, v in proj.items()}
        flat.update({f"ms_adapter.{k}": v.contiguous() for k, v in raw["ms_adapter"].items()})
        flat["dummy_image_tokens"] = dummy.contiguous()
        files = {BRANCH_ROLE: out / names[BRANCH_ROLE]}
        save_file(flat, str(files[BRANCH_ROLE]), metadata={"format": "ms_adapter"})
        info = {"branch": art.branch.spec.to_json(), "generation": art.generation, "samples": [],
                "lora": None, "source": {"ms_adapter": str(adapter_file)}}
        if lora_file is not None:
            files[LORA_ROLE] = out / names[LORA_ROLE]
            write_with(files[LORA_ROLE], lambda tmp: shutil.copyfile(lora_file, tmp), "LoRA")
            info["lora"] = {"file": names[LORA_ROLE]}
            info["source"]["lora"] = str(lora_file)
        files[SPEC_ROLE] = out / SPEC_FILE
        write_json(files[SPEC_ROLE], info, newline=False)
        return files

    return export
