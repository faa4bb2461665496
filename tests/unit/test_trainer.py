"""The training loop: bitwise resume, atomic checkpoints, NaN stop, foreign-run refusal."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from relgen.errors import ConfigError, RelgenError
from relgen.run import run_training
from relgen.testing import compose
from relgen.train import checkpoint as ckpt

TI = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
      "method.batch_size=1", "method.grad_accum=2", "trainer.sample_at_end=false"]


def _export(run_dir: Path) -> dict:
    return load_file(str(run_dir / "export" / "textual_inversion-R.safetensors"))


def test_resume_is_bitwise_equal(tmp_path):
    """4 steps straight == 2 steps, resume, 2 steps (same config, linear LR decay on)."""
    args = TI + ["method.max_steps=4", "trainer.max_steps=null", "trainer.checkpoint_every=2",
                 "method.lr_scheduler=linear", "method.timestep_sampler=relation_focal"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_training(compose(*args), straight) == 0
    assert run_training(compose(*args), resumed) == 0
    # Throw away everything after step 2 of the second run, then continue it.
    import shutil

    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    shutil.rmtree(resumed / "export")
    assert [p.name for p in ckpt.checkpoint_dirs(resumed)] == ["step-000002"]
    assert run_training(compose(*args, "resume=latest"), resumed) == 0
    a, b = _export(straight), _export(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and training did move the row away from its initialisation
    init = _export(straight)
    state2 = ckpt.load_checkpoint(resumed / "checkpoints" / "step-000002")
    assert not torch.equal(state2["method_state"]["rows.text_encoder"][0], init["<R>"])
    # metrics: one row per step, no duplicates after the resume
    rows = (resumed / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert rows == (straight / "metrics.csv").read_text().strip().splitlines()


def test_resume_of_another_backbone_is_refused(tmp_path):
    assert run_training(compose(*TI), tmp_path) == 0
    with pytest.raises(RelgenError, match="backbone=tiny_sd15.*this run is .*backbone=tiny_sd21"):
        run_training(compose(*[a.replace("tiny_sd15", "tiny_sd21") for a in TI], "resume=latest"), tmp_path)


def test_existing_run_dir_needs_resume(tmp_path):
    assert run_training(compose(*TI), tmp_path) == 0
    with pytest.raises(ConfigError, match="resume=latest"):
        run_training(compose(*TI), tmp_path)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from relgen.methods.textual_inversion.method import TextualInversion

    original = TextualInversion.training_step
    calls = {"n": 0}

    def flaky(self, batch, ctx):
        out = original(self, batch, ctx)
        calls["n"] += 1
        if ctx.step == 2:  # the third optimizer step
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(TextualInversion, "training_step", flaky)
    with pytest.raises(RelgenError, match=r"step 3: the loss is nan .*step-000002"):
        run_training(compose(*TI, "trainer.max_steps=5"), tmp_path)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["step-000001", "step-000002"]
    assert ckpt.load_checkpoint(ckpt.checkpoint_dirs(tmp_path)[-1])["step"] == 2
    assert not (tmp_path / "export").exists()


KILLER = r'''
import os, sys, time
from pathlib import Path
import relgen.train.checkpoint as ck
real = ck._write_payload
def slow(path, payload):
    if payload["step"] == 2:
        with open(path, "wb") as f:
            f.write(b"partial")
            f.flush()
        Path(sys.argv[2]).write_text("writing")
        time.sleep(60)
    real(path, payload)
ck._write_payload = slow
sys.path.insert(0, sys.argv[3])
from relgen.testing import compose
from relgen.run import run_training
run_training(compose(*sys.argv[4:]), Path(sys.argv[1]))
'''


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    run_dir, flag = tmp_path / "run", tmp_path / "flag"
    tests_dir = str(Path(__file__).resolve().parents[1])
    args = TI + ["trainer.max_steps=3"]
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(run_dir), str(flag), tests_dir, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    found = ckpt.checkpoint_dirs(run_dir)
    assert [p.name for p in found] == ["step-000001"]
    assert ckpt.load_checkpoint(found[0])["step"] == 1
    assert list((run_dir / "checkpoints").glob(".step-000002.tmp-*"))  # the killed write, ignored
    # and the run continues from it
    assert run_training(compose(*args, "resume=latest"), run_dir) == 0
    assert [p.name for p in ckpt.checkpoint_dirs(run_dir)] == ["step-000002", "step-000003"]
    assert not list((run_dir / "checkpoints").glob(".step-*.tmp-*"))


def test_scale_lr_counts_processes():
    from relgen.train.loop import effective_lr

    cfg = compose("method=textual_inversion").method
    assert effective_lr(cfg, 1) == pytest.approx(2e-3)  # 2.5e-4 × 2 × 4, ReVersion's recipe
    assert effective_lr(cfg, 2) == pytest.approx(4e-3)


def test_long_prompt_warns_with_what_was_cut():
    from relgen.testing import load_tiny

    bb = load_tiny("tiny_sd15")
    with pytest.warns(UserWarning, match=r"longer than 77 tokens and was cut"):
        ids = bb.tokenize(["a cat " * 60])
    assert ids[0].shape == (1, 77) and ids[0][0, -1].item() == bb.slots[0].eos_id
