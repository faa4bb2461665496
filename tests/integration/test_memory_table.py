"""`benchmarks/memory_table.py`: counting a step's memory without computing it.

The count with a fake UNet, VAE and image encoder must equal the count of the same step with real tensors, on
the tiny backbones, for every method; the README's memory table rests on that.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _memory_table():
    spec = importlib.util.spec_from_file_location("relgen_memory_table", ROOT / "benchmarks" / "memory_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_live_bytes_counts_storages_once_until_freed():
    mt = _memory_table()
    with mt.LiveBytes() as live:
        a = torch.zeros(10)  # 40 bytes
        view = a.view(2, 5)  # the same storage: nothing new
        b = view + 1  # 40 more
        assert (live.now, live.peak) == (80, 80)
        del b
        assert (live.now, live.peak) == (40, 80)
        live.reset_peak()
        c = torch.ones(3, dtype=torch.float64)  # 24 bytes
        assert (live.now, live.peak) == (64, 64)
    del a, view, c


def test_live_bytes_reads_fake_values_as_one():
    from torch._subclasses.fake_tensor import FakeTensorMode

    mt = _memory_table()
    with FakeTensorMode():
        x = torch.randn(4)
    with mt.LiveBytes():
        assert float(x.sum()) == 1.0
        assert bool(torch.isfinite(x).all()) is True
        assert int(x.argmax()) == 1


@pytest.mark.parametrize("method,family,overrides", [
    ("reversion", "sd15", []),
    ("rrnet", "sd21", ["backbone.prediction_type=epsilon"]),  # its graph runs in DGL on real tensors
    ("relationbooth", "sdxl", ["trainer=lowvram"]),  # bf16 autocast and weights, gradient checkpointing
])
def test_fake_count_equals_the_real_one(method, family, overrides):
    mt = _memory_table()
    fake = mt.estimate(method, family, 64, overrides, size="tiny", fake=True)
    real = mt.estimate(method, family, 64, overrides, size="tiny", fake=False)
    assert fake["fake"] and not real["fake"]
    keys = ["weights_bytes", "trained_bytes", "optimizer_state_bytes"]
    assert {k: fake[k] for k in keys} == {k: real[k] for k in keys}
    for key in ("first_step_peak_bytes", "step_peak_bytes"):
        if "trainer=lowvram" in overrides:
            # Under bf16 autocast the meta kernels of group and layer norm return their per-row mean and
            # rstd in bfloat16 where the CPU kernels keep float32: a few hundred bytes on this model.
            assert fake[key] == pytest.approx(real[key], rel=1e-3)
        else:
            assert fake[key] == real[key]
    # AdamW keeps two float32 moments and a step count for each trained tensor that got a gradient
    # (RRNet's second-layer object and relation convolutions get none)
    assert 0 < real["optimizer_state_bytes"] <= real["trained_bytes"] * 2 + 8 * 4096
    assert real["activations_bytes"] > 0


def test_bf16_weights_halve_the_unet_and_text_encoder():
    mt = _memory_table()
    fp32 = mt.estimate("reversion", "sd15", 64, [], size="tiny")
    bf16 = mt.estimate("reversion", "sd15", 64, ["backbone.dtype=bfloat16"], size="tiny")
    vae = bf16["weights_bytes"]["float32"]  # the VAE keeps backbone.vae_dtype
    assert bf16["weights_bytes"]["bfloat16"] * 2 + vae == fp32["weights_bytes"]["float32"]
    assert 0 < vae < fp32["weights_bytes"]["float32"] / 2


def test_live_bytes_does_not_count_views_of_tensors_made_before():
    mt = _memory_table()
    weight = torch.zeros(8, 4)  # 128 bytes, made before counting
    with mt.LiveBytes() as live:
        transposed = weight.t()  # a view of a weight, as F.linear takes it
        weight.add_(1)  # in place
        out = torch.ones(2, 8) @ weight  # a temporary (2, 8) of ones, 64 bytes, and the (2, 4) product, 32
        assert (live.now, live.peak) == (32, 96)
    del transposed, out
