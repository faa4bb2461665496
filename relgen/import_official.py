"""Turn an official checkpoint into a relgen run folder: ``python -m relgen.import_official``.

    python -m relgen.import_official method=reversion file=experiments/painted_on/learned_embeds.bin \\
        backbone=sd15 run_dir=runs/painted_on
    python -m relgen.import_official method=rrnet file=checkpoints/gat_placed backbone=sd21_base \\
        run_dir=runs/placed A=book R=placed B=bowl
    python -m relgen.import_official method=relationbooth file=ms_adapter.bin backbone=sdxl run_dir=runs/ms
    python -m relgen.import_official method=relationbooth file=dreamrelation_lora.safetensors \\
        method.ms_adapter=ms_adapter.bin method.relation_name=hug backbone=sdxl run_dir=runs/hug

Each method reads its own official format (:meth:`relgen.plugin.Method.import_official`; the
built-ins: ReVersion's ``learned_embeds.bin``, RRNet's ``gat_<R>``, MS-Diffusion's
``ms_adapter.bin`` and DreamRelation's LoRA on it; ``--help`` lists every registered one):
its importer reads the file (``weights_only=True``), checks it against the backbone's
widths, and the result is written as ``<run_dir>/export/`` in relgen's own format with
``relgen.json`` and a model card, so ``python -m relgen.generate run_dir=...`` and
``relgen.load(run_dir)`` take it like a trained run. The files are named after the token or
relation as a trained run's are (``reversion-R.safetensors``, ``rrnet-placed.safetensors`` from
``R=placed``); an official LoRA or branch names no relation, so RelationBooth's files take
``method.relation_name`` (``relationbooth-hug-lora.safetensors``), else ``relation``. Any other
``method.*`` or ``backbone.*`` override is applied as in ``python -m relgen`` (e.g.
``method.placeholder_token``, ``method.image_encoder``, ``backbone.pretrained``).
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from relgen.atomic import write_text
from relgen.config import compose_run
from relgen.console import run_cli
from relgen.errors import ConfigError, RelgenError
from relgen.export import export_run
from relgen.registry import get_method, list_methods

USAGE_HEAD = """usage: python -m relgen.import_official method=<name> file=<path> backbone=<name> run_dir=<new folder> \\
           [method.<field>=...] [backbone.<field>=...] [<a method's own options>]

"""


def importable_methods() -> dict[str, type]:
    """The registered methods that read an official checkpoint, by name."""
    methods = {name: get_method(name) for name in list_methods()}
    return {name: cls for name, cls in methods.items() if cls.official_format}


def usage() -> str:
    lines = []
    for name, cls in importable_methods().items():
        words = f"; its own options: {'= '.join(cls.official_words)}=" if cls.official_words else ""
        lines.append(textwrap.fill(f"file= {cls.official_format}{words}", width=100, initial_indent=f"  method={name:14s}",
                                   subsequent_indent=" " * 23))
    return USAGE_HEAD + "\n".join(lines) + "\n"


class _Imported:
    """Stands in for a trained method in :func:`relgen.export.export_run`: it only exports."""

    def __init__(self, export) -> None:
        self.export = export


def import_official(method: str, file: str, backbone: str, run_dir: str, overrides: tuple[str, ...] = (),
                    words: Optional[dict] = None) -> Path:
    """Write ``run_dir`` (``config.yaml`` and ``export/``) from an official checkpoint; see the module docstring."""
    method_cls = get_method(method)
    if not method_cls.official_format:
        raise ConfigError(f"relgen.import_official: method={method} has no official format; known: "
                          f"{list(importable_methods())}")
    words = {k: v for k, v in (words or {}).items() if v is not None}
    unknown = sorted(set(words) - set(method_cls.official_words))
    if unknown:
        raise ConfigError(f"relgen.import_official: {unknown} are not options of method={method} "
                          f"(its own: {list(method_cls.official_words) or 'none'}; it takes its words from method.* fields)")
    path = Path(file).expanduser()
    if not path.is_file():
        raise RelgenError(f"{path}: file not found (file= must be the official checkpoint)")
    out = Path(run_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"relgen.import_official: run_dir={out} already holds files; give a new folder")
    cfg = compose_run(f"method={method}", f"backbone={backbone}", *overrides)
    OmegaConf.set_readonly(cfg, False)
    export = method_cls.import_official(cfg, path, words)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True), "run config")
        command = "python -m relgen.import_official " + " ".join(
            [f"method={method}", f"file={file}", f"backbone={backbone}", f"run_dir={run_dir}", *overrides])
        export_run(cfg, out, _Imported(export), dataset=f"none (imported from {path})", command=command)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        return run_cli(lambda: print(usage(), end="") or (0 if argv else 2))

    def body() -> int:
        args: dict[str, str] = {}
        overrides = []
        for item in argv:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"relgen.import_official: expected key=value, got {item!r} (see --help)")
            if key.startswith(("method.", "backbone.")) or key in ("cache_dir", "seed"):
                overrides.append(item)
            else:
                args[key] = value
        for key in ("method", "file", "backbone", "run_dir"):
            if key not in args:
                raise ConfigError(f"relgen.import_official: {key}= is required (see --help)")
        method_cls = get_method(args["method"])
        known = ("method", "file", "backbone", "run_dir", *method_cls.official_words)
        unknown = [k for k in args if k not in known]
        if unknown:
            raise ConfigError(f"relgen.import_official: unknown option '{unknown[0]}'; known: method, file, backbone, "
                              f"run_dir, {''.join(w + ', ' for w in method_cls.official_words)}method.<field>, "
                              "backbone.<field>")
        words = {k: args[k] for k in method_cls.official_words if k in args}
        out = import_official(args["method"], args["file"], args["backbone"], args["run_dir"], tuple(overrides), words)
        print(f"relgen: imported {args['file']} as a {args['method']} run on {args['backbone']}: {out}")
        print(f"  generate with: python -m relgen.generate run_dir={out} prompt=...")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
