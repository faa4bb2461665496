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

import dataclasses
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
           [method.<field>=...] [backbone.<field>=...] [<a method's own options>]   (or relgen-import-official)

Turn a checkpoint in a method's official format into a relgen run folder (config.yaml and export/
with relgen.json and a model card), which relgen-generate, relgen-evaluate and relgen.load(run_dir)
take like a trained run. Every key is typed and checked before anything loads; method.* and
backbone.* overrides are those of `relgen` (relgen --help), applied to the run written.

keys:
  method=      the method whose official format file= is (one of those below)
  file=        the official checkpoint
  backbone=    the backbone it was trained on (sd15, sd21_base, sdxl, ...; relgen-list prints them)
  run_dir=     a new or empty folder for the run

methods with an official format:
"""

USAGE_EXAMPLES = """
examples:
  relgen-import-official method=reversion file=experiments/painted_on/learned_embeds.bin backbone=sd15 \\
      run_dir=runs/painted_on
  relgen-import-official method=rrnet file=checkpoints/gat_placed backbone=sd21_base run_dir=runs/placed \\
      A=book R=placed B=bowl
  relgen-import-official method=relationbooth file=dreamrelation_lora.safetensors \\
      method.ms_adapter=ms_adapter.bin method.relation_name=hug backbone=sdxl run_dir=runs/hug
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
    return USAGE_HEAD + "\n".join(lines) + "\n" + USAGE_EXAMPLES


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


#: Keys of the run config (``python -m relgen``): ``method=`` and ``backbone=`` choose its groups, the others
#: override its fields in the run written.
RUN_KEYS = ("method", "backbone", "cache_dir", "seed")


def register_schema() -> type:
    """Store the typed schema of the command line's own keys (``import_official_schema`` in Hydra's
    ConfigStore): ``file``, ``run_dir`` and every registered method's own words (e.g. RRNet's
    ``A``/``R``/``B``), all text; returns the dataclass. ``method=``, ``backbone=`` and their fields
    are the run config's (see :data:`RUN_KEYS`)."""
    from dataclasses import field, make_dataclass

    from hydra.core.config_store import ConfigStore

    words = sorted({w for cls in importable_methods().values() for w in cls.official_words})
    fields = [(name, Optional[str], field(default=None)) for name in ("file", "run_dir", *words)]
    schema = make_dataclass("ImportOfficialConfig", fields)
    ConfigStore.instance().store(name="import_official_schema", node=schema)
    return schema


def _is_run_key(arg: str) -> bool:
    key, sep, _ = arg.lstrip("+~").partition("=")
    return bool(sep) and key.split(".", 1)[0] in RUN_KEYS


def main(argv: Optional[list[str]] = None) -> int:
    from relgen.cli import composition_error, hydra_override, run_hydra_command

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        return run_cli(lambda: print(usage(), end="") or (0 if argv else 2))
    try:
        schema = register_schema()
    except RelgenError as exc:  # a plugin that does not load
        print(f"relgen: error: {exc}", file=sys.stderr)
        return 2
    # method=, backbone= and their fields belong to the run config: checked against its schema (one line,
    # "did you mean ...") before anything loads, and applied to the run written
    run_args = [a for a in argv if _is_run_key(a)]
    choices = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in run_args if a.split("=", 1)[0] in ("method", "backbone")}
    for key in ("method", "backbone"):
        if key not in choices:
            print(f"relgen: error: relgen.import_official: {key}= is required (see --help)", file=sys.stderr)
            return 2
    bad = composition_error(run_args)
    if bad:
        print(f"relgen: error: {bad}", file=sys.stderr)
        return 2
    overrides = tuple(a for a in run_args if a.split("=", 1)[0] not in ("method", "backbone"))
    # paths and a method's words (sentences such as RRNet's ARB=a circle is above a square) are taken verbatim
    verbatim = tuple(f.name for f in dataclasses.fields(schema))
    own = [hydra_override(a, free_text=verbatim) for a in argv if not _is_run_key(a)]

    def body(cfg) -> int:
        from omegaconf import OmegaConf

        args = OmegaConf.to_container(cfg)
        for key in ("file", "run_dir"):
            if args.get(key) is None:
                raise ConfigError(f"relgen.import_official: {key}= is required (see --help)")
        words = {k: v for k, v in args.items() if k not in ("file", "run_dir") and v is not None}
        out = import_official(choices["method"], args["file"], choices["backbone"], args["run_dir"], overrides, words)
        print(f"relgen: imported {args['file']} as a {choices['method']} run on {choices['backbone']}: {out}")
        print(f"  generate with: python -m relgen.generate run_dir={out} prompt=...")
        return 0

    return run_hydra_command("import_official", body, own, "relgen.import_official")


if __name__ == "__main__":
    sys.exit(main())
