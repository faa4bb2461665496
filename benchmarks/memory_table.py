"""Memory a user can plan with: each method on its paper's family at native resolution, by the
precision settings users pick, in parts.

    python benchmarks/memory_table.py            # builds each method once at full size (minutes)
    python benchmarks/memory_table.py --markdown # the README's table from the saved JSON

For ReVersion (SD 1.5, 512 px), RRNet (SD 2.1-base, 512 px) and RelationBooth (SDXL, 1024 px) the
script builds the run as ``python -m relgen`` does, with random weights in the published
architectures, takes one optimizer step and counts, from the tensors themselves:

* **weights** of each module, as stored under each setting: float32, or with
  ``backbone.dtype=bfloat16`` the frozen UNet and text encoders in bfloat16 (the VAE keeps
  ``backbone.vae_dtype``, float32; trained parameters stay float32);
* **trained parameters**, their **gradients** (float32, the same size) and the **optimizer
  state** (AdamW: two float32 moments per trained parameter; ``method.optimizer=adamw8bit``:
  two 8-bit moments, 2 bytes per parameter, plus bitsandbytes' block scales, which we leave out);
* **activations**: the peak RSS of the full-size command-line run at native resolution
  (``tests/integration/test_full_size_cli.py``, ``benchmarks/results/full_size_cli_cpu.json``)
  minus the parts above, on the CPU in float32 (RelationBooth: ``trainer=lowvram``). It includes
  the Python and PyTorch runtime (about half a GiB); a GPU's activations under autocast and
  gradient checkpointing are smaller and are measured by ``benchmarks/gpu_check.sh``.

Counts are independent of resolution, so the build uses 256 px. Writes
``benchmarks/results/memory_table.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GIB = 2**30

#: method -> (family of step_time.py's tiny presets, native resolution), as the papers train
PAPER = {"reversion": ("sd15", 512), "rrnet": ("sd21", 512), "relationbooth": ("sdxl", 1024)}
#: the full-size command-line run's backbone name of each method (test_full_size_cli.py)
CLI_BACKBONE = {"reversion": "sd15", "rrnet": "sd21_base", "relationbooth": "sdxl"}


def _step_time():
    spec = importlib.util.spec_from_file_location("relgen_step_time", HERE / "step_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count(method_name: str) -> dict:
    """Bytes by part of one method's run at full size (one optimizer step taken)."""
    from relgen.train.loop import Trainer

    family, _ = PAPER[method_name]
    extra = ["backbone.prediction_type=epsilon"] if family == "sd21" else []  # SD 2.1-base
    _, cfg, acc, bb, method = _step_time()._build(method_name, family, True, extra, 256)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, Path(run_dir), acc, bb, method)
        trainer.run_step()
        trained = {id(p): p for p in trainer.params}
        state = [v for s in trainer.optimizer.optimizer.state.values() for v in s.values() if hasattr(v, "numel")]
        modules = {"unet": bb.unet, "vae": bb.vae, **{f"text_encoder_{i + 1}": s.encoder for i, s in enumerate(bb.slots)}}
        frozen = {name: sum(p.numel() for p in m.parameters() if id(p) not in trained) for name, m in modules.items()}
        n_trained = sum(p.numel() for p in trained.values())
        return {"method": method_name, "family": family, "frozen_params": frozen, "trained_params": n_trained,
                "trained_dtype": str(next(iter(trained.values())).dtype).replace("torch.", ""),
                "optimizer_state_bytes": sum(v.numel() * v.element_size() for v in state)}


def parts(row: dict, cli: dict | None) -> dict:
    """GiB by part under each setting, from :func:`count`'s row and the command-line run's peak."""
    frozen, trained = row["frozen_params"], row["trained_params"]
    weights = {"float32": sum(frozen.values()) * 4,
               "bfloat16": sum(n * (4 if name == "vae" else 2) for name, n in frozen.items())}
    out = {"weights_fp32_gib": weights["float32"] / GIB, "weights_bf16_gib": weights["bfloat16"] / GIB,
           "trained_gib": trained * 4 / GIB, "gradients_gib": trained * 4 / GIB,
           "adamw_state_gib": row["optimizer_state_bytes"] / GIB, "adamw8bit_state_gib": trained * 2 / GIB}
    if cli and "train_peak_rss_gib" in cli:
        counted = out["weights_fp32_gib"] + out["trained_gib"] + out["gradients_gib"] + out["adamw_state_gib"]
        out["cli_peak_rss_gib"] = cli["train_peak_rss_gib"]
        out["cli_overrides"] = cli.get("overrides", [])
        out["activations_cpu_gib"] = cli["train_peak_rss_gib"] - counted
    return out


def _size(gib: float) -> str:
    for unit, scale in (("GiB", 1.0), ("MiB", 2**10), ("KiB", 2**20)):
        if gib * scale >= 1 or unit == "KiB":
            return f"{gib * scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return ""


def markdown(table: dict) -> str:
    lines = ["| method (family, px) | weights fp32 / bf16 | trained + gradients | AdamW / 8-bit AdamW state | "
             "activations (CPU, fp32, measured) |", "|---|---|---|---|---|"]
    for name, r in table["methods"].items():
        family, res = PAPER[name]
        act = (f"{r['activations_cpu_gib']:.1f} GiB (peak RSS {r['cli_peak_rss_gib']:.1f})"
               + (f", {' '.join(r['cli_overrides'])}" if r.get("cli_overrides") else "")
               if "activations_cpu_gib" in r else "not measured")
        lines.append(f"| {name} ({family}, {res}) | {_size(r['weights_fp32_gib'])} / {_size(r['weights_bf16_gib'])} | "
                     f"{_size(r['trained_gib'] + r['gradients_gib'])} | "
                     f"{_size(r['adamw_state_gib'])} / {_size(r['adamw8bit_state_gib'])} | {act} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(PAPER), choices=list(PAPER))
    ap.add_argument("--markdown", action="store_true", help="print the table from the saved JSON and exit")
    ap.add_argument("--out", type=Path, default=RESULTS / "memory_table.json")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    cli_file = RESULTS / "full_size_cli_cpu.json"
    cli = json.loads(cli_file.read_text()) if cli_file.is_file() else {}
    old = json.loads(args.out.read_text()) if args.out.is_file() else {"methods": {}}
    for name in args.methods:
        row = count(name)
        old["methods"][name] = {**row, **parts(row, cli.get(name))}
        print(name, json.dumps(old["methods"][name]), flush=True)
        args.out.write_text(json.dumps(old, indent=1) + "\n")  # after each method: a long run keeps what it measured
    print(markdown(old))
    return 0


if __name__ == "__main__":
    sys.exit(main())
