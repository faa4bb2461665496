"""Turn an official checkpoint into a relgen run folder: ``python -m relgen.import_official``.

    python -m relgen.import_official method=reversion file=experiments/painted_on/learned_embeds.bin \\
        backbone=sd15 run_dir=runs/painted_on
    python -m relgen.import_official method=rrnet file=checkpoints/gat_placed backbone=sd21_base \\
        run_dir=runs/placed A=book R=placed B=bowl
    python -m relgen.import_official method=relationbooth file=ms_adapter.bin backbone=sdxl run_dir=runs/ms
    python -m relgen.import_official method=relationbooth file=dreamrelation_lora.safetensors \\
        method.ms_adapter=ms_adapter.bin method.relation_name=hug backbone=sdxl run_dir=runs/hug

The four kinds are ReVersion's ``learned_embeds.bin``, RRNet's ``gat_<R>``, MS-Diffusion's
``ms_adapter.bin`` (the image-prompt branch alone) and DreamRelation's LoRA (on top of that
branch). Each is read by its method's importer (``weights_only=True``), checked against the
backbone's widths, and written as ``<run_dir>/export/`` in relgen's own format with
``relgen.json`` and a model card, so ``python -m relgen.generate run_dir=...`` and
``relgen.load(run_dir)`` take it like a trained run. The files are named after the token or
relation as a trained run's are (``reversion-R.safetensors``, ``rrnet-placed.safetensors`` from
``R=placed``); an official LoRA or branch names no relation, so RelationBooth's files take
``method.relation_name`` (``relationbooth-hug-lora.safetensors``), else ``relation``. Any other
``method.*`` or ``backbone.*`` override is applied as in ``python -m relgen`` (e.g.
``method.placeholder_token``, ``method.image_encoder``, ``backbone.pretrained``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

from relgen.errors import ConfigError, RelgenError

METHODS = ("reversion", "rrnet", "relationbooth")
WORDS = ("A", "R", "B", "ARB", "BRA")  # RRNet: the relation's words and its two prompts

USAGE = """usage: python -m relgen.import_official method=<reversion|rrnet|relationbooth> file=<path> \\
           backbone=<name> run_dir=<new folder> [A= R= B= ARB= BRA=] [method.<field>=...] [backbone.<field>=...]

  method=reversion      file= ReVersion's learned_embeds.bin ({"<R>": tensor (768,)}, SD 1.5)
  method=rrnet          file= RRNet's gat_<R> (torch.save of the graph network); A=, R=, B= name the
                        relation's words (ARB=, BRA= its two prompts) so generation needs no more
  method=relationbooth  file= MS-Diffusion's ms_adapter.bin (the image branch alone), or DreamRelation's
                        LoRA .safetensors with method.ms_adapter=<ms_adapter.bin>; method.image_encoder= and
                        method.clipself_checkpoint= name the CLIP encoders (default: the released ones);
                        method.relation_name= names the exported files (relationbooth-<name>-lora.safetensors)
"""


class _Imported:
    """Stands in for a trained method in :func:`relgen.export.export_run`: it only exports."""

    def __init__(self, export: Callable[[Path], list[Path]]) -> None:
        self.export = export


def text_encoder_widths(bcfg, cache_dir: Optional[str] = None) -> Optional[list[int]]:
    """Token-embedding width of each text encoder, read from the configs (no weights are loaded).

    ``None`` when the configs are not on disk (a hub id that is not cached).
    """
    folder = _config_folder(bcfg, cache_dir)
    if folder is None:
        return None
    subfolders = ["text_encoder"] + (["text_encoder_2"] if bcfg.family == "sdxl" else [])
    widths = []
    for sub in subfolders:
        path = folder / sub / "config.json"
        if not path.is_file():
            return None
        widths.append(int(json.loads(path.read_text())["hidden_size"]))
    return widths


def unet_cross_attention_dim(bcfg, cache_dir: Optional[str] = None) -> Optional[int]:
    folder = _config_folder(bcfg, cache_dir)
    path = folder / "unet" / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    return int(json.loads(path.read_text())["cross_attention_dim"])


def unet_skeleton(bcfg, cache_dir: Optional[str] = None):
    """The backbone's UNet built from its ``config.json`` on the ``meta`` device (no weights are read),
    to check an artifact's keys and shapes against; ``None`` when the config is not on disk."""
    folder = _config_folder(bcfg, cache_dir)
    path = folder / "unet" / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(path.parent)))


def _config_folder(bcfg, cache_dir: Optional[str]) -> Optional[Path]:
    from relgen.backbones.loading import materialize_tiny, resolve_pretrained

    if bcfg.tiny:
        return materialize_tiny(bcfg, cache_dir)
    source = resolve_pretrained(bcfg)
    local = Path(source).expanduser()
    if local.is_dir():
        return local
    if local.suffix in (".safetensors", ".ckpt"):
        if bcfg.single_file_config:
            return Path(bcfg.single_file_config).expanduser()
        from relgen.backbones import single_file

        info = single_file.detect(local)
        return single_file.config_folder(info.architecture, info.prediction_type or bcfg.prediction_type)
    try:  # a hub id: its configs, if they are in the local cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, revision=bcfg.revision, allow_patterns=["*.json"],
                                      local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: the widths are checked when the model loads
        return None


def _check_width(file: Path, what: str, got: int, widths: Optional[list[int]], bcfg) -> None:
    if widths is not None and got != sum(widths):
        raise RelgenError(f"{file}: {what} is {got}-wide but backbone {bcfg.name}'s text encoders are "
                          f"{'+'.join(map(str, widths))}-wide; import it with the backbone it was trained on")


def _reversion(cfg, file: Path, words: dict) -> Callable[[Path], list[Path]]:
    from relgen.methods.reversion.importer import import_official_embeds
    from relgen.methods.textual_inversion.method import EMBEDS_ROLE, embeds_file_name, save_token_embeddings

    if cfg.backbone.family != "sd":
        raise RelgenError(f"{file}: ReVersion's learned_embeds.bin holds one text encoder's row; backbone "
                          f"{cfg.backbone.name} has two (use an SD 1.x/2.x backbone)")
    art = import_official_embeds(file, lowercase_prompts=cfg.method.lowercase_prompts)
    folder = _config_folder(cfg.backbone, cfg.cache_dir)
    if folder is not None:  # the token as training checks it (else at generation, by apply())
        from relgen.methods.reversion.importer import check_token_for_tokenizers

        check_token_for_tokenizers(art.token, folder, file)
    row = art.rows["text_encoder"]
    _check_width(file, f"the '{art.token}' row", row.shape[1], text_encoder_widths(cfg.backbone, cfg.cache_dir),
                 cfg.backbone)
    cfg.method.placeholder_token = art.token
    name = embeds_file_name(cfg.method.name, art.token)  # reversion-R.safetensors
    return lambda out: {EMBEDS_ROLE: save_token_embeddings(out / name, art.token, art.rows)}


def _rrnet(cfg, file: Path, words: dict) -> Callable[[Path], list[Path]]:
    from safetensors.torch import save_file

    from relgen.methods.rrnet.artifact import (FORMAT, FORMAT_VERSION, NETWORK_ROLE, RELATION_FILE, RELATION_ROLE,
                                               RRNetArtifact, gat_file_name)

    widths = text_encoder_widths(cfg.backbone, cfg.cache_dir)
    width = sum(widths) if widths else (1024 if cfg.backbone.family == "sd" else 2048)
    m = cfg.method
    try:
        art = RRNetArtifact.from_official(file, width=width, hidden=m.hidden_size, heads=m.num_heads,
                                          scale=m.inference_scale, **words)
    except RelgenError as exc:
        message = str(exc) if str(file) in str(exc) else f"{file}: {exc}"
        got = _rrnet_input_width(file)
        if got is not None and got != width:  # the network's width follows the text encoders it was trained on
            message += (f"; the file's network takes {got}-wide text features and backbone {cfg.backbone.name}'s are "
                        f"{width}-wide: import it with the backbone it was trained on (RRNet's release: sd21_base)")
        raise RelgenError(message) from exc
    relation = {"format": FORMAT, "version": FORMAT_VERSION, "relation": m.relation or words.get("R"),
                **{k: words.get(k) for k in WORDS}, "in_dim": width, "out_dim": width, "hidden": m.hidden_size,
                "heads": m.num_heads, "eot_self_loops": False, "node_widths": widths or [width],
                "object_template": m.object_template, "scale": m.inference_scale,
                "grid_scales": list(m.grid_scales), "backbone": cfg.backbone.name, "source": str(file)}

    name = gat_file_name(relation, cfg.method.name)  # rrnet-<relation>.safetensors

    def export(out: Path) -> dict[str, Path]:
        tensors = {k: v.detach().cpu().contiguous() for k, v in art.gnn.state_dict().items()}
        save_file(tensors, str(out / name), metadata={"format": FORMAT})
        (out / RELATION_FILE).write_text(json.dumps(relation, indent=2) + "\n")
        return {NETWORK_ROLE: out / name, RELATION_ROLE: out / RELATION_FILE}

    return export


def _rrnet_input_width(file: Path) -> Optional[int]:
    """The input width of a ``gat_<R>`` file's first graph layer (``None`` if it cannot be read)."""
    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        return int(state["conv1.mods.link_oe.fc.weight"].shape[1])
    except Exception:  # noqa: BLE001 - only a hint for an error that is already being raised
        return None


def _relationbooth(cfg, file: Path, words: dict) -> Callable[[Path], list[Path]]:
    from safetensors.torch import load_file, save_file

    from relgen.methods.relationbooth.artifact import (BRANCH_ROLE, DEFAULT_RELATION_NAME, LORA_ROLE, SPEC_FILE,
                                                       SPEC_ROLE, RelationBoothArtifact, export_names)
    from relgen.methods.relationbooth.convert import (_read_adapter_file, check_adapter_fits_unet,
                                                      check_adapter_layout, check_lora_fits_unet, load_ms_adapter)

    m = cfg.method
    unet = unet_skeleton(cfg.backbone, cfg.cache_dir)
    if file.suffix == ".safetensors":  # DreamRelation's LoRA, on top of MS-Diffusion's branch
        try:
            lora = load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise RelgenError(f"{file}: cannot be read as a safetensors LoRA ({exc})") from exc
        from relgen.tensorfile import check_finite

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
    raw = _read_adapter_file(adapter_file)
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
            shutil.copyfile(lora_file, files[LORA_ROLE])
            info["lora"] = {"file": names[LORA_ROLE]}
            info["source"]["lora"] = str(lora_file)
        files[SPEC_ROLE] = out / SPEC_FILE
        files[SPEC_ROLE].write_text(json.dumps(info, indent=2))
        return files

    return export


_IMPORTERS = {"reversion": _reversion, "rrnet": _rrnet, "relationbooth": _relationbooth}


def import_official(method: str, file: str, backbone: str, run_dir: str, overrides: tuple[str, ...] = (),
                    words: Optional[dict] = None) -> Path:
    """Write ``run_dir`` (``config.yaml`` and ``export/``) from an official checkpoint; see the module docstring."""
    from omegaconf import OmegaConf

    from relgen.config import compose_run
    from relgen.export import export_run

    if method not in METHODS:
        raise ConfigError(f"relgen.import_official: method={method} has no official format; known: {list(METHODS)}")
    path = Path(file).expanduser()
    if not path.is_file():
        raise RelgenError(f"{path}: file not found (file= must be the official checkpoint)")
    out = Path(run_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"relgen.import_official: run_dir={out} already holds files; give a new folder")
    cfg = compose_run(f"method={method}", f"backbone={backbone}", *overrides)
    OmegaConf.set_readonly(cfg, False)
    export = _IMPORTERS[method](cfg, path, {k: v for k, v in (words or {}).items() if v is not None})
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        command = "python -m relgen.import_official " + " ".join(
            [f"method={method}", f"file={file}", f"backbone={backbone}", f"run_dir={run_dir}", *overrides])
        export_run(cfg, out, _Imported(export), dataset=f"none (imported from {path})", command=command)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def main(argv: Optional[list[str]] = None) -> int:
    from relgen.cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE, end="")
        return 0 if argv else 2

    def body() -> int:
        args: dict[str, str] = {}
        overrides = []
        for item in argv:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"relgen.import_official: expected key=value, got {item!r} (see --help)")
            if key.startswith(("method.", "backbone.")) or key in ("cache_dir", "seed"):
                overrides.append(item)
            elif key in ("method", "file", "backbone", "run_dir", *WORDS):
                args[key] = value
            else:
                raise ConfigError(f"relgen.import_official: unknown option '{key}'; known: method, file, backbone, "
                                  f"run_dir, {', '.join(WORDS)}, method.<field>, backbone.<field>")
        for key in ("method", "file", "backbone", "run_dir"):
            if key not in args:
                raise ConfigError(f"relgen.import_official: {key}= is required (see --help)")
        words = {k: args[k] for k in WORDS if k in args}
        if words and args["method"] != "rrnet":
            raise ConfigError(f"relgen.import_official: {sorted(words)} are RRNet's relation words; "
                              f"method={args['method']} takes its words from method.* fields")
        out = import_official(args["method"], args["file"], args["backbone"], args["run_dir"], tuple(overrides), words)
        print(f"relgen: imported {args['file']} as a {args['method']} run on {args['backbone']}: {out}")
        print(f"  generate with: python -m relgen.generate run_dir={out} prompt=...")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
