"""The first run on an accelerator, in one command: the ``gpu`` tests, then the full-size training
step of each method on its paper's backbone at native resolution, with every precision setting
users pick, into one JSON file named after the card.

    bash benchmarks/gpu_check.sh              # on a CUDA machine, < 8 minutes on one H100
    bash benchmarks/gpu_check.sh --dry        # the whole plan on the CPU with tiny backbones

Each measurement (one subprocess, so its peak CUDA memory is its own) reports it/s, the
step/floor ratio (median of interleaved pairs, see ``step_time.py``), peak CUDA memory, the
memory by kind (weights, trained parameters, optimizer state, peak above the weights) and the
official per-step work: the released ReVersion and RRNet code VAE-encode the step's images and
RRNet re-runs the frozen text encoder every step, which relgen's caches skip; ``official_step_s``
is the step plus that work, timed on the same shapes. A measurement that would pass its cap or
the overall budget is cut and recorded as such; a setting the machine cannot run (8-bit AdamW
without bitsandbytes, fp16 autocast on a CPU) is recorded with the reason.

``--dry`` runs the same plan on tiny backbones (one pair each; the first measurement in its own
process as on the accelerator, the rest in this one), collects the ``gpu`` tests instead of running
them, and checks that each skipped setting's overrides compose.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

#: each method on its paper's backbone at native resolution (step_time.py's tiny_<family> structures)
PAPER = [
    {"method": "reversion", "family": "sd15", "resolution": 512, "extra": []},
    {"method": "rrnet", "family": "sd21", "resolution": 512, "extra": ["backbone.prediction_type=epsilon"]},
    {"method": "relationbooth", "family": "sdxl", "resolution": 1024, "extra": []},
]
#: the precision settings users pick, as command-line overrides, the most used first (a plan cut by
#: the time budget loses the last ones, for every method alike)
SETTINGS = {
    "bf16-mixed": ["trainer.mixed_precision=bf16"],
    # trainer=lowvram: bf16 autocast, bf16 stored weights, gradient checkpointing, cached latents
    "lowvram": ["trainer=lowvram"],
    "bf16-weights": ["trainer.mixed_precision=bf16", "backbone.dtype=bfloat16"],
    "bf16-weights+checkpointing+adamw8bit": ["trainer.mixed_precision=bf16", "backbone.dtype=bfloat16",
                                             "trainer.gradient_checkpointing=true", "method.optimizer=adamw8bit"],
    "fp16-mixed": ["trainer.mixed_precision=fp16"],
    "fp32": ["trainer.mixed_precision=no"],
}


def _step_time():
    spec = importlib.util.spec_from_file_location("relgen_step_time", Path(__file__).with_name("step_time.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def card_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu-{platform.machine()}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cannot_run(overrides: list[str], cuda: bool) -> str | None:
    """Why this machine cannot run a setting, or None."""
    if "method.optimizer=adamw8bit" in overrides:
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed (pip install 'relgen[optim]')"
        if not cuda:
            return "8-bit AdamW needs CUDA"
    if "trainer.mixed_precision=fp16" in overrides and not cuda:
        return "fp16 autocast needs an accelerator"
    return None


def plan(methods=None, settings=None) -> list[dict]:
    rows = []
    for name, over in SETTINGS.items():
        if settings and name not in settings:
            continue
        for paper in PAPER:
            if methods and paper["method"] not in methods:
                continue
            rows.append({**paper, "setting": name, "overrides": paper["extra"] + over})
    return rows


def gpu_tests(dry: bool, cap: float) -> dict:
    """``pytest -m gpu tests/gpu`` (collected only with ``--dry``): counts and the output's tail."""
    args = [sys.executable, "-m", "pytest", "-m", "gpu", str(ROOT / "tests" / "gpu"), "-q", "-p", "no:cacheprovider"]
    if dry:
        args.append("--collect-only")
    start = time.perf_counter()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=cap, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        return {"rc": None, "error": f"cut at the {cap:.0f} s cap", "seconds": cap,
                "tail": (exc.stdout or b"")[-2000:].decode(errors="replace") if isinstance(exc.stdout, bytes) else ""}
    out = proc.stdout + proc.stderr
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|tests? collected)", out)}
    return {"rc": proc.returncode, "counts": counts, "seconds": time.perf_counter() - start,
            "tail": out[-2000:], "collected_only": dry}


def measure_here(row: dict, full: bool, pairs: int) -> dict:
    """One measurement in this process (step_time.run_one with the row's overrides)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # each setting brings its own mixed precision
    st = _step_time()
    resolution = row["resolution"] if full else None
    result = st.run_one(row["method"], row["family"], full, pairs, extra=row["overrides"], resolution=resolution)
    result["it_s"] = 1.0 / result["step_s"]
    result["official_step_s"] = result["step_s"] + result["uncached_extra_s"]
    result["official_it_s"] = 1.0 / result["official_step_s"]
    return result


def measure_child(row: dict, pairs: int, cap: float, full: bool = True) -> dict:
    """One measurement (full size unless ``full`` is false) in a subprocess, cut at ``cap`` seconds."""
    args = [sys.executable, __file__, "--one", json.dumps(row), "--pairs", str(pairs)] + ([] if full else ["--tiny"])
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=cap, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"cut at the {cap:.0f} s cap"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    import torch

    from relgen.testing import compose

    cuda = torch.cuda.is_available()
    if not args.dry and not cuda:
        raise SystemExit("gpu_check: no CUDA device here; run it on an accelerator, or pass --dry to run its plan "
                         "on the CPU with tiny backbones")
    start = time.perf_counter()
    report = {"card": card_name() if not args.dry else "dry-run (tiny backbones, CPU)",
              "dry": args.dry, "torch": torch.__version__, "cuda": torch.version.cuda,
              "budget_s": args.budget, "cap_s": args.cap, "pairs": args.pairs,
              "command": "bash benchmarks/gpu_check.sh" + (" --dry" if args.dry else ""),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report["gpu_tests"] = gpu_tests(args.dry, min(args.cap * 2, args.budget))
    rows = []
    for row in plan(args.methods, args.settings):
        entry = {k: row[k] for k in ("method", "family", "resolution", "setting", "overrides")}
        left = args.budget - (time.perf_counter() - start)
        reason = cannot_run(row["overrides"], cuda)
        if reason:
            compose(f"method={row['method']}", f"backbone=tiny_{row['family']}", *row["overrides"])  # still valid
            entry["skipped"] = reason
        elif left < 10:
            entry["skipped"] = f"the {args.budget:.0f} s budget is spent"
        elif args.dry and any("via" in r for r in rows):
            entry.update(measure_here(row, full=False, pairs=args.pairs))
        elif args.dry:  # the first one goes the way every measurement goes on the accelerator
            entry.update(measure_child(row, args.pairs, min(args.cap, left), full=False), via="subprocess")
        else:
            entry.update(measure_child(row, args.pairs, min(args.cap, left)))
        rows.append(entry)
        _print_row(entry)
    report["rows"] = rows
    report["total_s"] = time.perf_counter() - start
    return report


def _print_row(r: dict) -> None:
    head = f"{r['method']:13s} {r['family']:5s} {r['resolution']:5d} {r['setting']:38s}"
    if "skipped" in r or "error" in r:
        print(f"{head} {r.get('skipped') or r.get('error')}", flush=True)
        return
    print(f"{head} {r['it_s']:7.3f} it/s  step/floor {r['ratio']:.3f} [{r['ratio_min']:.3f}-{r['ratio_max']:.3f}]  "
          f"peak {r['peak_mem_gib']:6.2f} GiB  official {r['official_it_s']:.3f} it/s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="the whole plan on the CPU with tiny backbones")
    ap.add_argument("--pairs", type=int, default=None, help="interleaved step/floor pairs (5; 1 with --dry)")
    ap.add_argument("--cap", type=float, default=75.0, help="seconds one measurement may take")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (tests included)")
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--settings", nargs="+", default=None, choices=list(SETTINGS))
    ap.add_argument("--out", type=Path, default=None, help="the JSON file (default: results/gpu_check_<card>.json)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pairs is None:
        args.pairs = 1 if args.dry else 5
    if args.one:  # child: one measurement
        print(json.dumps(measure_here(json.loads(args.one), full=not args.tiny, pairs=args.pairs)))
        return 0
    report = run(args)
    out = args.out or RESULTS / f"gpu_check_{slug(report['card'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    tests = report["gpu_tests"]
    print(f"gpu tests: {tests.get('counts') or tests.get('error')}; {len(report['rows'])} measurements in "
          f"{report['total_s']:.0f} s; written to {out}")
    failed = tests.get("rc") not in (0, 5) or any("error" in r for r in report["rows"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
