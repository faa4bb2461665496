"""Memory a user can plan with: each method on its paper's family at native resolution, by the
precision settings users pick, in parts.

    python benchmarks/memory_table.py            # every method x setting (a minute or two; no compute)
    python benchmarks/memory_table.py --markdown # the README's table from the saved JSON

For ReVersion (SD 1.5, 512 px), RRNet (SD 2.1-base, 512 px) and RelationBooth (SDXL, 1024 px), under
each precision setting of ``gpu_check.py`` (its ``SETTINGS``), the script builds the run as
``python -m relgen`` does with the published architectures, takes two optimizer steps through
``Trainer.run_step`` and counts, from the tensors:

* **weights**: every frozen parameter and buffer as stored (``backbone.dtype`` sets the UNet's and
  text encoders'; the VAE keeps ``backbone.vae_dtype``);
* **trained** parameters (float32) and their **optimizer state**, alive through the second step
  (8-bit AdamW, which needs CUDA, is counted at 2 bytes per trained parameter);
* **activations**: the second step's peak of everything else it allocates (saved activations,
  gradients, autocast's low-precision weight copies, temporaries).

It does not compute the costly parts of the step: the UNet, the VAE and RelationBooth's CLIP image
encoder are built as fake tensors (``torch._subclasses.FakeTensorMode``: shapes and dtypes, no
storage); the text encoders and the method's own trained modules are real (RRNet's graph runs in
DGL, which needs real tensors: the gradient reaching it arrives as real zeros), and
:class:`LiveBytes` follows every storage the step allocates until it is freed. Values read back from
fake tensors (a logged loss, a finiteness check) read as 1 / True, so a branch on a computed value
takes its usual path. The count equals a real-tensor run's on the tiny backbones
(``tests/integration/test_memory_table.py``) and is set beside the measured peak RSS of the
full-size command-line runs (``tests/integration/test_full_size_cli.py``,
``benchmarks/results/full_size_cli_cpu.json``) where their settings match. It counts tensors only:
a GPU adds its CUDA context and allocator slack, a CPU process its runtime (about half a GiB). CPU
autocast casts a slightly different list of operations than CUDA's. fp16 mixed precision needs an
accelerator here; its tensors have bf16-mixed's sizes.

Writes ``benchmarks/results/memory_table.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import weakref
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GIB = 2**30

#: the methods in table order (gpu_check.PAPER gives each one's family and native resolution)
METHODS = ["reversion", "rrnet", "relationbooth"]


def _benchmark(name: str):
    """Another script of this folder as a module (``step_time``, ``gpu_check``)."""
    spec = importlib.util.spec_from_file_location(f"relgen_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive now and at the peak, from the operations run while active.

    A ``TorchDispatchMode``: every new storage an operation returns is counted once until it is
    freed; storages that existed before are not counted, nor are views and in-place results of them.
    Reading a value out of a fake tensor (a branch on a computed number) gives 1 (True for a
    boolean) instead of failing.
    """

    def __init__(self):
        super().__init__()
        self.refs: dict[int, weakref.ref] = {}
        self.now = 0
        self.peak = 0

    def reset_peak(self) -> None:
        self.peak = self.now

    def _free(self, key: int, nbytes: int) -> None:
        if self.refs.pop(key, None) is not None:
            self.now -= nbytes

    def _add(self, t: torch.Tensor) -> None:
        for st in get_untyped_storages(t):
            key = id(st)
            if key in self.refs:
                continue
            nbytes = st.nbytes()
            self.refs[key] = weakref.ref(st, lambda _r, key=key, n=nbytes: self._free(key, n))
            self.now += nbytes
            self.peak = max(self.peak, self.now)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and isinstance(args[0], FakeTensor):
            dtype = args[0].dtype
            return True if dtype == torch.bool else (1.0 if dtype.is_floating_point else 1)
        out = func(*args, **(kwargs or {}))
        # a view or an in-place result shares an input's storage: nothing new (the input may be a
        # weight or a cached tensor that existed before counting began)
        inputs = {id(st) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)
                  for st in get_untyped_storages(a)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not any(id(st) in inputs for st in get_untyped_storages(t)):
                self._add(t)
        return out


def _cast_in_place(module, dtype):
    """``module.to(dtype)`` by replacing each floating parameter and buffer (fake tensors cannot be
    swapped in place by ``Module.to``)."""
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                mod._parameters[name] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                mod._buffers[name] = b.to(dtype)
    return module


class _RealGradient(torch.autograd.Function):
    """Identity forward; a fake incoming gradient goes on as real zeros of its shape and dtype, so
    that modules computed outside PyTorch's dispatcher (DGL's sparse kernels) never receive a fake
    tensor. The bytes are those of the real gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros(grad.shape, dtype=grad.dtype) if isinstance(grad, FakeTensor) else grad


def _real_gradients(forward):
    def wrapped(*args, **kwargs):
        out = forward(*args, **kwargs)
        return {k: _RealGradient.apply(v) if v.requires_grad else v for k, v in out.items()}
    return wrapped


def _to_keeping_fakes(to):
    """``Module.to`` for modules holding fake tensors: a dtype is applied by :func:`_cast_in_place`
    and a device is kept (everything here is on the CPU); other modules go through ``to``."""
    def wrapped(module, *args, **kwargs):
        if not any(isinstance(p, FakeTensor) for p in module.parameters()):
            return to(module, *args, **kwargs)
        _device, dtype, _non_blocking, _fmt = torch._C._nn._parse_to(*args, **kwargs)
        return _cast_in_place(module, dtype) if dtype is not None else module
    return wrapped


@contextlib.contextmanager
def _fake_image_modules(fake: bool):
    """While active, the UNet, the VAE and the CLIP image encoder are built as fake tensors and
    RRNet's graph network gets real gradients (when ``fake``), modules holding fake tensors change
    dtype by replacing their parameters, and nothing goes to the disk cache (fake tensors cannot be
    written)."""
    import relgen.data.cache as cache
    from relgen.methods.rrnet.gnn import RelationGAT

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    saved = {}

    def patch(owner, name, value):
        saved[(owner, name)] = getattr(owner, name)
        setattr(owner, name, value)

    def faked(cls):
        def build(*args, **kwargs):
            with mode:
                return cls(*args, **kwargs)
        return build

    if fake:
        # the module objects that ``from ... import`` reads (transformers' lazy module can differ from
        # the one ``import transformers`` returned)
        for package, name in (("diffusers", "UNet2DConditionModel"), ("diffusers", "AutoencoderKL"),
                              ("transformers", "CLIPVisionModelWithProjection")):
            importlib.import_module(package)
            owner = sys.modules[package]
            patch(owner, name, faked(getattr(owner, name)))
        patch(RelationGAT, "forward", _real_gradients(RelationGAT.forward))
        patch(torch.nn.Module, "to", _to_keeping_fakes(torch.nn.Module.to))
    patch(cache.TensorCache, "get", lambda self, key: None)
    patch(cache.TensorCache, "put", lambda self, key, tensors: None)
    patch(cache.TensorCache, "get_or_compute", lambda self, key, fn: fn())
    try:
        yield
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


def estimate(method_name: str, family: str, resolution: int, overrides=(), size: str = "full",
             fake: bool = True, around_steps=contextlib.nullcontext) -> dict:
    """Peak bytes of one method's step under ``overrides``, counted by :class:`LiveBytes`.

    Builds the run as ``python -m relgen`` does (random weights of ``size``; the UNet, the VAE and
    the CLIP image encoder fake when ``fake``), takes two optimizer steps through
    ``Trainer.run_step`` and returns the weights by dtype (frozen parameters and buffers of the
    backbone and of the method's own modules), the trained parameters, the optimizer state and the
    second step's peak above what existed before the first (activations, gradients, autocast copies
    and temporaries; the optimizer state is alive by then and counted apart). ``around_steps`` is a
    context manager entered around the two steps (:func:`rss_check` reads the process's memory
    there).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from relgen.backbones.loading import build_random_backbone
    from relgen.data.registry import open_dataset
    from relgen.registry import get_method
    from relgen.train.loop import Trainer

    st = _benchmark("step_time")
    over = [f"method={method_name}", f"backbone=tiny_{family}", f"dataset={st.DATASETS[method_name]}",
            "trainer.report_to=[]", "trainer.progress=false", f"backbone.resolution={resolution}",
            f"dataset.size={resolution}", *overrides]
    cfg = st._compose(over)
    AcceleratorState._reset_state(reset_partial_state=True)  # each setting brings its own mixed precision
    acc = Accelerator(mixed_precision=cfg.trainer.mixed_precision)
    torch.manual_seed(0)
    with _fake_image_modules(fake):
        bb = build_random_backbone(cfg.backbone, size=size)
        if cfg.trainer.gradient_checkpointing:  # as relgen.run does
            bb.unet.enable_gradient_checkpointing()
        method = get_method(method_name)(cfg.method, bb, open_dataset(cfg.dataset).load())
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(cfg, Path(run_dir), acc, bb, method)
            trained = {id(p): p for p in trainer.params}
            # the backbone's modules and the method's own (RelationBooth's image branch)
            modules = [bb.unet, bb.vae, *(s.encoder for s in bb.slots),
                       *(v for v in vars(method).values() if isinstance(v, torch.nn.Module))]
            weights: dict[str, int] = {}
            seen = set()
            for m in modules:
                for t in [*m.parameters(), *m.buffers()]:
                    if id(t) in trained or id(t) in seen:
                        continue
                    seen.add(id(t))
                    key = str(t.dtype).replace("torch.", "")
                    weights[key] = weights.get(key, 0) + t.numel() * t.element_size()
            live = LiveBytes()
            with around_steps(), live:
                trainer.run_step()
                state = sum(v.numel() * v.element_size() for s in trainer.optimizer.optimizer.state.values()
                            for v in s.values() if isinstance(v, torch.Tensor))
                first = live.peak
                live.reset_peak()
                trainer.run_step()
    return {"method": method_name, "family": family, "resolution": resolution, "overrides": list(overrides),
            "size": size, "fake": fake, "weights_bytes": weights,
            "trained_bytes": sum(p.numel() * p.element_size() for p in trained.values()),
            "optimizer_state_bytes": state, "first_step_peak_bytes": first, "step_peak_bytes": live.peak,
            "activations_bytes": live.peak - state}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_check(method_name: str, family: str, resolution: int, overrides=()) -> dict:
    """The count set against what the process really holds: the same two steps with real tensors
    at full size (minutes of compute), the peak resident memory of the steps alone (Linux: the
    high-water mark is reset just before them through ``/proc/self/clear_refs``) minus the memory
    resident before them, beside :class:`LiveBytes`' count of the same steps."""
    seen = {}

    @contextlib.contextmanager
    def around():
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        seen["before_kib"] = _rss_kib("VmRSS")
        yield
        seen["peak_kib"] = _rss_kib("VmHWM")

    r = estimate(method_name, family, resolution, overrides, fake=False, around_steps=around)
    counted = max(r["first_step_peak_bytes"], r["step_peak_bytes"])
    return {"method": method_name, "family": family, "resolution": resolution, "overrides": list(overrides),
            "counted_steps_peak_gib": counted / GIB,
            "rss_steps_peak_gib": (seen["peak_kib"] - seen["before_kib"]) * 1024 / GIB,
            "command": f"python benchmarks/memory_table.py --rss-check {method_name}"}


def _size(gib: float) -> str:
    for unit, scale in (("GiB", 1.0), ("MiB", 2**10), ("KiB", 2**20)):
        if gib * scale >= 1 or unit == "KiB":
            return f"{gib * scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return ""


#: settings the CPU cannot run, and how the table counts them
FP16 = "trainer.mixed_precision=fp16"
ADAMW8BIT = "method.optimizer=adamw8bit"


def row_for(method_name: str, family: str, resolution: int, setting: str, overrides: list[str],
            branch: tuple[str, ...] = ()) -> dict:
    """One method x setting at full size: :func:`estimate`'s bytes in GiB, by part (``branch``: more
    overrides that are not part of the setting)."""
    if FP16 in overrides:
        return {"method": method_name, "family": family, "resolution": resolution, "setting": setting,
                "overrides": overrides, "skipped": "fp16 autocast needs an accelerator; its tensors have "
                                                    "bf16-mixed's sizes"}
    eightbit = ADAMW8BIT in overrides
    run = [o for o in overrides if o != ADAMW8BIT]  # the step's tensors do not depend on the optimizer
    r = estimate(method_name, family, resolution, run + list(branch))
    state = (r["trained_bytes"] // 4) * 2 if eightbit else r["optimizer_state_bytes"]
    out = {"method": method_name, "family": family, "resolution": resolution, "setting": setting,
           "overrides": overrides, "weights_gib": {k: v / GIB for k, v in r["weights_bytes"].items()},
           "trained_gib": r["trained_bytes"] / GIB, "optimizer_state_gib": state / GIB,
           "optimizer_state_counted": "2 bytes per trained parameter (8-bit AdamW needs CUDA)" if eightbit
           else "measured", "activations_gib": r["activations_bytes"] / GIB}
    out["total_gib"] = (sum(out["weights_gib"].values()) + out["trained_gib"] + out["optimizer_state_gib"]
                        + out["activations_gib"])
    return out


def markdown(table: dict) -> str:
    """The README's tables: each method x setting, then the counts beside the measured runs."""
    lines = ["| method (family, px) | setting | weights | trained | optimizer state | activations | "
             "peak (tensors) |", "|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        head = f"| {r['method']} ({r['family']}, {r['resolution']}) | {r['setting']} |"
        if "skipped" in r:
            lines.append(f"{head} {r['skipped']} | | | | |")
            continue
        eightbit = " (8-bit, counted)" if ADAMW8BIT in r["overrides"] else ""
        lines.append(f"{head} {_size(sum(r['weights_gib'].values()))} | {_size(r['trained_gib'])} | "
                     f"{_size(r['optimizer_state_gib'])}{eightbit} | {_size(r['activations_gib'])} | "
                     f"**{_size(r['total_gib'])}** |")
    lines += ["", "| command-line run (CPU) | settings as run | peak (tensors, counted) | peak RSS (measured) |",
              "|---|---|---|---|"]
    for r in table.get("checks", []):
        settings = " ".join(o for o in r["overrides"] if not o.startswith("backbone.prediction_type"))
        lines.append(f"| {r['method']} ({r['family']}, {r['resolution']}) | {settings} | "
                     f"{_size(r['total_gib'])} | {_size(r['cli_peak_rss_gib'])} |")
    return "\n".join(lines)


#: RelationBooth's image branch as published, in random weights: the vision tower of CLIP ViT-bigG-14
#: (DreamRelation's image encoder) and MS-Diffusion's resampler sizes (``method.tiny.*`` sizes the
#: random encoder and, with it, the resampler)
PUBLISHED_BRANCH = {"relationbooth": [
    "method.tiny.image_size=224", "method.tiny.patch_size=14", "method.tiny.hidden_size=1664",
    "method.tiny.intermediate_size=8192", "method.tiny.num_layers=48", "method.tiny.num_heads=16",
    "method.tiny.projection_dim=1280", "method.tiny.resampler_dim=1280", "method.tiny.resampler_depth=4",
    "method.tiny.resampler_dim_head=64", "method.tiny.resampler_heads=20", "method.tiny.resampler_ff_mult=4"]}


def cli_overrides(cli_row: dict) -> list[str]:
    """The precision settings a full-size command-line run resolved (``test_full_size_cli.py``
    records them), as overrides, to count that run again beside its measured peak RSS."""
    return [f"{key}={str(value).lower() if isinstance(value, bool) else value}"
            for key, value in cli_row["settings"].items()]


def main(argv=None) -> int:
    gc = _benchmark("gpu_check")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--settings", nargs="+", default=None, choices=list(gc.SETTINGS))
    ap.add_argument("--markdown", action="store_true", help="print the table from the saved JSON and exit")
    ap.add_argument("--out", type=Path, default=RESULTS / "memory_table.json")
    ap.add_argument("--rss-check", choices=METHODS, default=None,
                    help="run that method's two steps for real at full size in float32 (minutes) and set the "
                         "count beside the resident memory they take; adds to the saved JSON")
    args = ap.parse_args(argv)
    if args.rss_check:
        paper = next(p for p in gc.PAPER if p["method"] == args.rss_check)
        result = rss_check(args.rss_check, paper["family"], paper["resolution"], paper["extra"])
        table = json.loads(args.out.read_text())
        table.setdefault("rss_checks", {})[args.rss_check] = result
        args.out.write_text(json.dumps(table, indent=1) + "\n")
        print(json.dumps(result))
        return 0
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    cli_file = RESULTS / "full_size_cli_cpu.json"
    cli = json.loads(cli_file.read_text()) if cli_file.is_file() else {}
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    rows = {(r["method"], r["setting"]): r for r in old.get("rows", [])}
    checks = {r["method"]: r for r in old.get("checks", [])}
    table = {"command": "python benchmarks/memory_table.py", "torch": torch.__version__,
             **({"rss_checks": old["rss_checks"]} if "rss_checks" in old else {})}
    plan = sorted(gc.plan(args.methods, args.settings), key=lambda r: METHODS.index(r["method"]))
    for plan_row in plan:
        name, setting = plan_row["method"], plan_row["setting"]
        row = row_for(name, plan_row["family"], plan_row["resolution"], setting, plan_row["overrides"],
                      branch=tuple(PUBLISHED_BRANCH.get(name, [])))
        rows[(name, setting)] = row
        print(name, setting, json.dumps(row), flush=True)
    for paper in gc.PAPER:  # each command-line run as it ran (RelationBooth's with the tiny image encoder)
        name, run = paper["method"], cli.get(paper["method"], {})
        if name in args.methods and "settings" in run:
            over = paper["extra"] + cli_overrides(run)
            checks[name] = {**row_for(name, paper["family"], paper["resolution"], "as run", over),
                            "cli_peak_rss_gib": run["train_peak_rss_gib"]}
            print(name, "command-line run", json.dumps(checks[name]), flush=True)
    order = list(gc.SETTINGS)
    table["rows"] = sorted(rows.values(), key=lambda r: (METHODS.index(r["method"]), order.index(r["setting"])))
    table["checks"] = [checks[m] for m in METHODS if m in checks]
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
