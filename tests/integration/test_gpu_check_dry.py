"""`bash benchmarks/gpu_check.sh --dry`: the accelerator check's whole plan on the CPU with tiny
backbones, so the script that the first GPU run depends on cannot rot."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_runs_the_whole_plan(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON", __import__("sys").executable))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry"] is True and report["command"] == "bash benchmarks/gpu_check.sh --dry"
    tests = report["gpu_tests"]
    assert tests["rc"] == 0 and tests["collected_only"] is True
    assert "4 tests collected" in tests["tail"]  # tests/gpu: 2 precisions, the SDXL VAE, 8-bit AdamW
    rows = report["rows"]
    # every method on its paper's family at native resolution, with every precision setting
    assert [(r["method"], r["family"], r["resolution"]) for r in rows[::6]] == [
        ("reversion", "sd15", 512), ("rrnet", "sd21", 512), ("relationbooth", "sdxl", 1024)]
    assert [r["setting"] for r in rows[:6]] == ["fp32", "fp16-mixed", "bf16-mixed", "lowvram", "bf16-weights",
                                                "bf16-weights+checkpointing+adamw8bit"]
    assert len(rows) == 18 and not any("error" in r for r in rows)
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
        # AdamW keeps two fp32 moments per trained parameter; bf16 weights halve the frozen UNet and text encoders
        assert abs(by[(method, "fp32")]["optimizer_state_gib"] - 2 * by[(method, "fp32")]["trained_gib"]) < 1e-6
        # (the fp32 VAE and trained parameters keep the tiny models above half)
        assert 0.5 < by[(method, "bf16-weights")]["weights_gib"] / by[(method, "fp32")]["weights_gib"] < 0.7
