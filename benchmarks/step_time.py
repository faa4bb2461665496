"""Training-step time and peak memory of each method, against the bare model compute.

For every method × backbone the script builds the run exactly as ``python -m relgen`` does,
then alternates one full optimizer step (``Trainer.run_step``) with its *floor*: the model
compute that step cannot avoid, on the same shapes:

* textual_inversion, reversion: text encoder forward + UNet forward, backward into the token
  embeddings (per micro-batch, × grad_accum);
* rrnet: two UNet forward+backward passes of the pair (positive and swapped), gradient into
  the conditioning;
* relationbooth: UNet forward+backward with the LoRA and the image branch, gradient into the
  LoRA weights (the method's own ``benchmark_floor``).

It reports the median of the step/floor ratios over ``--pairs`` interleaved pairs with the
spread (min–max), the median step and floor times, peak memory (peak RSS of a process that
runs one combination; CUDA peak allocation on a GPU), and what the caches save: the time to
VAE-encode the step's images and run the frozen text encoder on its prompts, which a step
without caches would add.

    python benchmarks/step_time.py                      # tiny backbones, every method
    python benchmarks/step_time.py --full --methods textual_inversion --backbones sd15
    python benchmarks/step_time.py --full --methods rrnet --backbones sd21
    python benchmarks/step_time.py --full --methods relationbooth --backbones sdxl

``--full`` builds the published UNet and text-encoder architectures with random weights at
32×32 latents (256 px). Results go to ``benchmarks/results/step_time[_full].json``.

``--options`` instead times one optimizer step with each loop-wide training option on
(``method.optimizer=prodigy|adafactor|sgd``, ``trainer.snr_gamma``, ``trainer.noise_offset``,
``trainer.input_perturbation``, ``trainer.ema_decay``) against the plain step of the same method
instance in the same process, interleaved, and reports the median ratio option/plain with its
spread (``benchmarks/results/step_time_options[_full].json``):

    python benchmarks/step_time.py --options --methods textual_inversion rrnet --backbones sd15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

METHODS = ["textual_inversion", "reversion", "rrnet", "relationbooth"]
#: the synthetic dataset each method trains on here (a bare run's default is the relworld one)
DATASETS = {"textual_inversion": "shapes_reversion", "reversion": "shapes_reversion", "rrnet": "shapes_rrnet",
            "relationbooth": "shapes_dreamrelation"}
BACKBONES = ["sd15", "sd21", "sdxl"]
RESULTS = Path(__file__).resolve().parent / "results"


def _compose(overrides):
    from hydra import compose, initialize_config_module

    from relgen.registry import register_builtin_schemas

    register_builtin_schemas()
    with initialize_config_module(config_module="relgen.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def _peak_memory_gib() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def _text_floor(method, batch):
    """Text encoder forward + UNet forward, backward into the embedding outputs (no optimizer)."""
    import torch

    bb = method.backbone
    gen = torch.Generator().manual_seed(0)
    ids = bb.tokenize(batch["captions"])
    handles = []
    for slot in bb.slots:  # make each embedding output a leaf that wants a gradient
        handles.append(slot.encoder.get_input_embeddings().register_forward_hook(
            lambda m, i, o: o.detach().requires_grad_(True)))
    try:
        dist = method.latent_dists[batch["index"]]
        latents = bb.sample_latents(dist, gen).to(bb.device)
        noise = torch.randn(latents.shape, generator=gen).to(bb.device)
        t = torch.randint(0, 1000, (latents.shape[0],), generator=gen).to(bb.device)
        cond = bb.encode_text(ids)
        pred = bb.unet_forward(bb.add_noise(latents, noise, t).to(bb.unet.dtype), t, cond)  # as the methods
        torch.nn.functional.mse_loss(pred.float(), noise.float()).backward()
    finally:
        for h in handles:
            h.remove()


def _pair_floor(method, batch):
    """Two UNet forward+backward passes (batch 2) with gradient into the conditioning."""
    import torch

    from relgen.backbones.base import TextCond

    bb = method.backbone
    gen = torch.Generator().manual_seed(0)
    res = method.latent_shape if hasattr(method, "latent_shape") else None
    if not hasattr(method, "_floor_cond"):  # the frozen text encoder is not part of the floor
        with torch.no_grad():
            method._floor_cond = bb.encode_prompts(["a photo", "a photo"])
    base = method._floor_cond
    cond = TextCond(base.hidden.detach().clone().requires_grad_(True), base.pooled, base.eot)
    if res is None:
        side = method.resolution // bb.vae_scale
        res = (4, side, side)
    latents = torch.randn((2, *res), generator=gen).to(bb.device)
    noise = torch.randn(latents.shape, generator=gen).to(bb.device)
    t = torch.randint(0, 1000, (1,), generator=gen).repeat(2).to(bb.device)
    noisy = bb.add_noise(latents, noise, t).to(bb.unet.dtype)  # as the methods
    loss = 0
    for x in (noisy, noisy.flip(0)):
        pred = bb.unet_forward(x, t, cond)
        loss = loss + torch.nn.functional.mse_loss(pred.float(), noise.float())
    loss.backward()


def _lora_floor(method, batch):
    """UNet forward+backward with the LoRA and the image branch, on the method's cached conditioning."""
    import torch

    from relgen.backbones.base import TextCond

    bb = method.backbone
    gen = torch.Generator().manual_seed(0)
    items = [method.items[i] for i in batch["index"]]
    crops = batch["crop"]
    latents = bb.sample_latents(torch.stack([it.crop_dists[c] for it, c in zip(items, crops)]), gen).to(bb.device)
    noise = torch.randn(latents.shape, generator=gen).to(bb.device)
    t = torch.randint(0, 1000, (latents.shape[0],), generator=gen).to(bb.device)
    ehs = torch.stack([it.crop_ehs[c] for it, c in zip(items, crops)]).to(bb.device)
    pooled = None if items[0].pooled is None else torch.stack([it.pooled for it in items]).to(bb.device)
    boxes = torch.stack([it.crop_boxes[c] for it, c in zip(items, crops)]).to(bb.device)
    pred = bb.unet_forward(bb.add_noise(latents, noise, t).to(bb.unet.dtype), t, TextCond(ehs, pooled),
                           cross_attention_kwargs={"boxes": boxes})
    torch.nn.functional.mse_loss(pred.float(), noise.float()).backward()


def _floor(method, batch):
    floors = {"textual_inversion": _text_floor, "reversion": _text_floor, "rrnet": _pair_floor,
              "relationbooth": _lora_floor}
    if method.name not in floors:
        raise SystemExit(f"no floor defined for method {method.name}")
    return floors[method.name](method, batch)


def _uncached_extra(method, batch) -> float:
    """Seconds a step would add if it VAE-encoded its images and ran the frozen text encoder."""
    import torch

    bb = method.backbone
    res = getattr(method, "resolution", bb.resolution)
    n_images = getattr(method.cfg, "batch_size", 1) * getattr(method.cfg, "grad_accum", 1)
    if method.name == "rrnet":
        n_images = 2
    pixels = torch.rand(n_images, 3, res, res) * 2 - 1
    seconds = _timed(lambda: bb.encode_latent_dist(pixels))
    if method.name in ("rrnet", "relationbooth"):  # these cache frozen text-encoder outputs
        prompts = ["a photo of a cat on a book"] * max(2, n_images)
        with torch.no_grad():
            seconds += _timed(lambda: bb.encode_prompts(prompts))
    return seconds


#: The loop-wide training options --options times, each against the plain step.
OPTIONS = {
    "optimizer=prodigy": ["method.optimizer=prodigy", "method.lr=1.0"],
    "optimizer=adafactor": ["method.optimizer=adafactor"],
    "optimizer=sgd": ["method.optimizer=sgd", "+method.optimizer_args.momentum=0.9"],
    "snr_gamma=5": ["trainer.snr_gamma=5"],
    "noise_offset=0.1": ["trainer.noise_offset=0.1"],
    "input_perturbation=0.1": ["trainer.input_perturbation=0.1"],
    "ema_decay=0.999": ["trainer.ema_decay=0.999"],
}


def _build(method_name: str, backbone: str, full: bool, extra=(), resolution: int | None = None):
    """The run ``python -m relgen`` would build: ``resolution`` (full size only) replaces the 256 px
    default; ``extra`` overrides come last. On an accelerator the random weights are drawn there."""
    import contextlib

    import torch
    from accelerate import Accelerator

    from relgen.backbones.loading import build_random_backbone, load_backbone
    from relgen.data.registry import open_dataset
    from relgen.registry import get_method

    torch.manual_seed(0)
    over = [f"method={method_name}", f"backbone=tiny_{backbone}", f"dataset={DATASETS[method_name]}",
            "trainer.report_to=[]", "trainer.progress=false"]
    if full:
        over += [f"backbone.resolution={resolution or 256}", f"dataset.size={resolution or 256}"]
    over += list(extra)
    cfg = _compose(over)
    acc = Accelerator(mixed_precision=cfg.trainer.mixed_precision)
    if full:
        # drawing 2.6 B random weights on the host takes longer than the measurement on a GPU
        where = torch.device(acc.device) if acc.device.type == "cuda" else contextlib.nullcontext()
        with where:
            bb = build_random_backbone(cfg.backbone, size="full", device=acc.device)
    else:
        bb = load_backbone(cfg.backbone, device=acc.device)
    if cfg.trainer.gradient_checkpointing:  # as relgen.run does
        bb.unet.enable_gradient_checkpointing()
    data = open_dataset(cfg.dataset).load()
    return over, cfg, acc, bb, get_method(method_name)(cfg.method, bb, data)


def run_options(method_name: str, backbone: str, full: bool, pairs: int) -> dict:
    """Step time with each training option on / the plain step, on one method instance."""
    from relgen.train.loop import Trainer

    over, cfg, acc, bb, method = _build(method_name, backbone, full)
    with tempfile.TemporaryDirectory() as run_dir:
        trainers = {"plain": Trainer(cfg, Path(run_dir), acc, bb, method)}
        for name, extra in OPTIONS.items():
            trainers[name] = Trainer(_compose(over + extra), Path(run_dir), acc, bb, method)
        for trainer in trainers.values():
            trainer.run_step()  # warm-up (optimizer state, first-call costs)
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(pairs):
            for name, trainer in trainers.items():
                times[name].append(_timed(trainer.run_step))
    plain = times["plain"]
    rows = {}
    for name in OPTIONS:
        ratios = [t / p for t, p in zip(times[name], plain)]
        rows[name] = {"step_s": statistics.median(times[name]), "ratio": statistics.median(ratios),
                      "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return {"method": method_name, "backbone": backbone, "size": "full" if full else "tiny", "pairs": pairs,
            "plain_step_s": statistics.median(plain), "options": rows, "device": str(acc.device)}


def run_one(method_name: str, backbone: str, full: bool, pairs: int, extra=(), resolution: int | None = None) -> dict:
    import torch

    from relgen.train.loop import Trainer

    _, cfg, acc, bb, method = _build(method_name, backbone, full, extra, resolution)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, Path(run_dir), acc, bb, method)
        trainer.run_step()  # warm-up
        memory = _memory_parts(bb, method, trainer, before)
        batch = method.next_batch(torch.Generator().manual_seed(1))

        def floor():  # under the step's autocast (mixed precision), as Trainer.run_step
            with acc.autocast():
                for _ in range(cfg.method.grad_accum):
                    _floor(method, batch)

        floor()
        for p in trainer.params:
            p.grad = None
        steps, floors = [], []
        for _ in range(pairs):
            steps.append(_timed(trainer.run_step))
            floors.append(_timed(floor))
            for module in [bb.unet] + [s.encoder for s in bb.slots]:
                module.zero_grad(set_to_none=True)
        uncached = _uncached_extra(method, batch)
    ratios = [s / f for s, f in zip(steps, floors)]
    step = statistics.median(steps)
    return {
        "method": method_name, "backbone": backbone, "size": "full" if full else "tiny",
        "latent": method.resolution // bb.vae_scale if hasattr(method, "resolution") else None,
        "pairs": pairs, "step_s": step, "floor_s": statistics.median(floors),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "peak_mem_gib": _peak_memory_gib(), "uncached_extra_s": uncached,
        "uncached_over_cached": (step + uncached) / step, **memory,
        "device": str(acc.device), "torch_threads": torch.get_num_threads(),
    }


def _tensor_gib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


def _memory_parts(bb, method, trainer, allocated_before) -> dict:
    """Memory by kind, counted from the tensors themselves (any device): all weights, the trained
    parameters among them, the optimizer state; on CUDA also the measurement's peak above the
    weights allocated before training (optimizer state, gradients, activations, workspace)."""
    import torch

    modules = [bb.unet, bb.vae] + [s.encoder for s in bb.slots]
    frozen = {id(p): p for m in modules for p in m.parameters()}
    trained = {id(p): p for p in trainer.params}
    state = [v for s in trainer.optimizer.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    weights = {**frozen, **trained}.values()
    by_dtype = {str(d).replace("torch.", ""): _tensor_gib([p for p in weights if p.dtype == d])
                for d in sorted({p.dtype for p in weights}, key=str)}
    out = {"weights_gib": _tensor_gib(weights), "weights_by_dtype_gib": by_dtype,
           "trained_gib": _tensor_gib(trained.values()), "optimizer_state_gib": _tensor_gib(state)}
    if allocated_before is not None:
        out["peak_above_weights_gib"] = (torch.cuda.max_memory_allocated() - allocated_before) / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="published architectures, random weights, 32x32 latents")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--backbones", nargs="+", default=BACKBONES)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per combination (1 gives steadier timings on a busy machine)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--options", action="store_true",
                    help="time each loop-wide training option against the plain step (ratio, same run)")
    ap.add_argument("--resolution", type=int, default=None, help="pixels with --full (default 256)")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides, e.g. trainer=lowvram")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.options:
        return options_main(args)

    if args.one:  # child process: one combination, so its peak memory is its own
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        method, backbone = args.one.split(":")
        print(json.dumps(run_one(method, backbone, args.full, args.pairs, args.extra, args.resolution)))
        return 0

    rows = []
    for m in args.methods:
        for b in args.backbones:
            proc = subprocess.run([sys.executable, __file__, "--one", f"{m}:{b}", "--pairs", str(args.pairs)]
                                  + (["--full"] if args.full else [])
                                  + (["--threads", str(args.threads)] if args.threads else []),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{m} on {b}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
                rows.append({"method": m, "backbone": b, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{m:18s} {b:5s} step {r['step_s']:.3f}s floor {r['floor_s']:.3f}s "
                  f"ratio {r['ratio']:.3f} [{r['ratio_min']:.3f}-{r['ratio_max']:.3f}] "
                  f"peak {r['peak_mem_gib']:.2f} GiB  no-cache x{r['uncached_over_cached']:.2f}", flush=True)
    out = args.out or RESULTS / ("step_time_full.json" if args.full else "step_time.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"\n| method | backbone | step (s) | floor (s) | ratio (median, min–max) | peak GiB | step without caches |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | {r['backbone']} | failed | | | | |")
            continue
        print(f"| {r['method']} | {r['backbone']} | {r['step_s']:.3f} | {r['floor_s']:.3f} | "
              f"{r['ratio']:.3f} ({r['ratio_min']:.3f}–{r['ratio_max']:.3f}) | {r['peak_mem_gib']:.2f} | "
              f"×{r['uncached_over_cached']:.2f} |")
    print(f"\nwritten to {out}")
    return 0


def options_main(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for m in args.methods:
        for b in args.backbones:
            r = run_options(m, b, args.full, args.pairs)
            rows.append(r)
            print(f"{m} on {b}: plain step {r['plain_step_s']:.3f}s", flush=True)
            for name, o in r["options"].items():
                print(f"  {name:24s} x{o['ratio']:.3f} [{o['ratio_min']:.3f}-{o['ratio_max']:.3f}]", flush=True)
    out = args.out or RESULTS / ("step_time_options_full.json" if args.full else "step_time_options.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    names = list(OPTIONS)
    print("\n| method | backbone | plain step (s) | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for r in rows:
        cells = [f"×{r['options'][n]['ratio']:.2f} ({r['options'][n]['ratio_min']:.2f}–{r['options'][n]['ratio_max']:.2f})"
                 for n in names]
        print(f"| {r['method']} | {r['backbone']} | {r['plain_step_s']:.3f} | " + " | ".join(cells) + " |")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
