"""Two processes, one run folder: the second stops at once naming the holder; the first finishes untouched."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relgen.testing import run_relgen

# A run that waits at its first step until the test lets it go.
HOLDER = r'''
import sys, time
from pathlib import Path
from relgen.train.loop import Trainer
real = Trainer.run_step
flag, go = Path(sys.argv[1]), Path(sys.argv[2])
def waiting(self):
    if self.step == 0:
        flag.write_text("training")
        while not go.exists():
            time.sleep(0.05)
    return real(self)
Trainer.run_step = waiting
sys.argv = ["relgen", *sys.argv[3:]]
from relgen.cli import train_main
train_main()
'''

ARGS = ["backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug", "trainer.sample_at_end=false"]


def test_a_second_run_in_a_busy_folder_stops_at_once(tmp_path):
    run_dir, training, go = tmp_path / "run", tmp_path / "training", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(training), str(go), *ARGS,
                              f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not training.exists():
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.time() < deadline
            time.sleep(0.1)
        config = (run_dir / "config.yaml").read_bytes()
        started = time.time()
        second = run_relgen(*ARGS, f"hydra.run.dir={run_dir}")
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [l for l in second.stderr.splitlines() if l.startswith("relgen: error:")]
        assert lines == [f"relgen: error: {run_dir}: in use by another relgen run (pid {first.pid}); wait for "
                         "it to finish, or choose another hydra.run.dir"]
        assert time.time() - started < 60  # no waiting for the lock: only the start-up time
        assert (run_dir / "config.yaml").read_bytes() == config
    finally:
        go.write_text("go")
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2
    assert (run_dir / "export" / "textual_inversion-R.safetensors").exists()


@pytest.mark.slow
def test_under_torchrun_rank_zero_names_and_locks_one_folder(tmp_path):
    """Two gloo processes, default run name: one folder (rank 0's), and a folder locked by
    another process refuses the whole launch naming that process."""
    from relgen.rundir import RunLock
    from relgen.testing import load_tiny

    load_tiny("tiny_sd15")  # built once here: two ranks building it into one cache at once race
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "relgen",
                *ARGS, "trainer.cpu=true", "trainer.max_steps=1"]
    proc = subprocess.run([*torchrun, f"output_root={tmp_path / 'out'}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "out" / "textual_inversion" / "tiny_sd15" / "shapes_reversion").iterdir())
    assert len(runs) == 1, runs  # the other rank's own default folder is gone again
    assert json.loads((runs[0] / "summary.json").read_text())["num_processes"] == 2

    busy = tmp_path / "busy"
    with RunLock(busy):
        import os

        proc = subprocess.run([*torchrun, f"hydra.run.dir={busy}"], capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0
        assert f"relgen: error: {busy}: in use by another relgen run (pid {os.getpid()})" in proc.stderr
    assert sorted(p.name for p in busy.iterdir()) == [".lock"]
