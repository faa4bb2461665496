"""`bash benchmarks/gpu_check.sh --dry`: the accelerator check's whole plan on the CPU with tiny
backbones, so the script that the first GPU run depends on cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_runs_the_whole_plan(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, PYTHON=sys.executable)  # the script runs with this interpreter
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry"] is True and report["command"] == "bash benchmarks/gpu_check.sh --dry"
    tests = report["gpu_tests"]
    assert tests["rc"] == 0 and tests["collected_only"] is True
    assert "4 tests collected" in tests["tail"]  # tests/gpu: 2 precisions, the SDXL VAE, 8-bit AdamW
    rows = report["rows"]
    # each precision setting (most used first), for every method on its paper's family at native resolution
    assert [(r["method"], r["family"], r["resolution"]) for r in rows[:3]] == [
        ("reversion", "sd15", 512), ("rrnet", "sd21", 512), ("relationbooth", "sdxl", 1024)]
    assert [r["setting"] for r in rows[::3]] == ["bf16-mixed", "lowvram", "bf16-weights",
                                                "bf16-weights+checkpointing+adamw8bit", "fp16-mixed", "fp32"]
    assert rows[4]["overrides"] == ["backbone.prediction_type=epsilon", "trainer=lowvram"]  # RRNet: SD 2.1-base
    assert len(rows) == 18 and not any("error" in r for r in rows)
    # the first measurement ran in its own process, as every one does on the accelerator
    assert [r.get("via") for r in rows if "step_s" in r][:2] == ["subprocess", None] and rows[0]["step_s"] > 0
    for r in rows:
        if r["setting"] in ("fp16-mixed", "bf16-weights+checkpointing+adamw8bit"):  # CUDA-only on a CPU
            assert r["skipped"] in ("fp16 autocast needs an accelerator", "8-bit AdamW needs CUDA",
                                    "bitsandbytes is not installed (pip install 'relgen[optim]')")
            continue
        assert r["pairs"] == 1 and r["step_s"] > 0 and r["floor_s"] > 0
        assert abs(r["it_s"] * r["step_s"] - 1) < 1e-9
        assert r["official_step_s"] == r["step_s"] + r["uncached_extra_s"] and r["uncached_extra_s"] > 0
        assert r["trained_gib"] > 0 and r["optimizer_state_gib"] > 0 and r["weights_gib"] > r["trained_gib"]
    by = {(r["method"], r["setting"]): r for r in rows}
    for method in ("reversion", "rrnet", "relationbooth"):
        fp32 = by[(method, "fp32")]
        # AdamW keeps two fp32 moments (and a step count) per trained parameter that received a gradient;
        # RRNet's second GAT layer has object-link weights that never do (only EOT nodes are read out)
        if method == "reversion":
            assert abs(fp32["optimizer_state_gib"] - 2 * fp32["trained_gib"]) < 1e-6
        else:
            assert 0 < fp32["optimizer_state_gib"] <= 2 * fp32["trained_gib"] + 1e-6
        # bf16 stored weights: the frozen UNet and text encoders in half the bytes, the VAE and the trained
        # parameters still float32
        bf16 = by[(method, "bf16-weights")]["weights_by_dtype_gib"]
        assert set(bf16) == {"bfloat16", "float32"} and fp32["weights_by_dtype_gib"].keys() == {"float32"}
        assert abs(2 * bf16["bfloat16"] + bf16["float32"] - fp32["weights_gib"]) < 1e-9
        assert bf16["float32"] >= fp32["trained_gib"]
