"""Run folders: one owner (an fcntl lock), collision-free names, refused runs that write nothing,
dry and failed runs that leave no folder, ``resume=latest`` that finds the newest run."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relgen import rundir
from relgen.errors import ConfigError, RelgenError
from relgen.run import claim_run_dir, run_training
from relgen.testing import compose
from relgen.train import checkpoint as ckpt

TI = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
      "method.batch_size=1", "method.grad_accum=1", "trainer.sample_at_end=false"]


def test_second_lock_is_refused_with_the_holders_pid(tmp_path):
    first = rundir.RunLock(tmp_path).acquire()
    try:
        with pytest.raises(ConfigError, match=rf"{re.escape(str(tmp_path))}: in use by another relgen run "
                                              rf"\(pid {os.getpid()}\)"):
            rundir.RunLock(tmp_path).acquire()
        assert rundir.is_locked(tmp_path)
    finally:
        first.release()
    assert not rundir.is_locked(tmp_path)
    with rundir.RunLock(tmp_path):  # released: the next owner gets it
        pass


def test_a_killed_owner_leaves_no_lock(tmp_path):
    code = ("import sys, time; from relgen.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=rf"pid {proc.pid}\)"):
        rundir.RunLock(tmp_path).acquire()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / ".lock").read_text().strip() == str(proc.pid)  # the stale file stays ...
    lock = rundir.RunLock(tmp_path).acquire()  # ... and does not block
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    lock.release()


class _Acc:
    def __init__(self, main: bool) -> None:
        self.is_main_process = main
        self.num_processes = 1


def test_only_rank_zero_takes_the_lock(tmp_path):
    cfg = compose(*TI)
    run_dir, lock = claim_run_dir(cfg, tmp_path / "other-rank", False, _Acc(main=False))
    assert lock is None and not (tmp_path / "other-rank").exists()
    run_dir, lock = claim_run_dir(cfg, tmp_path / "rank0", False, _Acc(main=True))
    try:
        assert lock.held and rundir.is_locked(run_dir) and (run_dir / ".lock").read_text().strip() == str(os.getpid())
    finally:
        lock.release()


def test_save_checkpoint_keeps_a_live_writers_temporary_folder(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / "checkpoints" / f".step-000009.tmp-{sleeper.pid}"
        live.mkdir(parents=True)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        stale = tmp_path / "checkpoints" / f".step-000008.tmp-{dead}"
        stale.mkdir()
        ckpt.save_checkpoint(tmp_path, 1, {"step": 1}, "seed: 0\n")
        assert live.is_dir() and not stale.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_default_run_names_are_readable_and_never_shared():
    from datetime import datetime

    when = datetime(2025, 1, 31, 14, 5, 9, 123456)
    assert rundir.run_name(when, 4242) == "2025-01-31_14-05-09.123_p4242"
    assert rundir.run_name(when, 4242) != rundir.run_name(when, 4243)  # same millisecond, two processes
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="relgen.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=["output_root=/o"], return_hydra_config=True)
    name = str(cfg.hydra.run.dir)
    assert re.fullmatch(rf"/o/textual_inversion/relworld/relworld_reversion/"
                        rf"\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d{{3}}_p{os.getpid()}", name), name


def test_a_refused_run_leaves_the_folder_byte_identical(tmp_path):
    assert run_training(compose(*TI), tmp_path) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    refusals = [
        (compose(*TI), "already holds checkpoints"),
        (compose(*TI, "backbone=tiny_sd21", "resume=latest"), "backbone=tiny_sd15"),
        (compose(*TI, "method.placeholder_token='<S>'", "resume=latest", "trainer.max_steps=3"),
         r"changed method\.placeholder_token"),
        (compose(*TI, "resume=latest"), "at step 2 and max_steps is 2: nothing to train"),
    ]
    for cfg, message in refusals:
        with pytest.raises(RelgenError, match=message):
            run_training(cfg, tmp_path)
        after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
        assert after == before, message
    assert not rundir.is_locked(tmp_path)


def test_dry_and_failed_runs_leave_no_folder_and_keep_an_existing_one(tmp_path):
    fresh = tmp_path / "out" / "a" / "run"
    assert run_training(compose(*TI, "dry_run=true"), fresh) == 0
    assert not (tmp_path / "out").exists()  # nor the parents it made
    with pytest.raises(RelgenError, match="runwayml/stable-diffusion-v1-5"):  # no weights here
        run_training(compose(*TI, "backbone=sd15"), fresh)
    assert not (tmp_path / "out").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(RelgenError):
        run_training(compose(*TI, "backbone=sd15"), mine)
    assert (mine / "notes.txt").read_text() == "keep"


def test_resume_latest_without_a_run_dir_continues_the_newest_run(tmp_path, capsys):
    parent = tmp_path / "textual_inversion" / "tiny_sd15" / "shapes_reversion"
    older, newer = parent / "2025-01-01_00-00-00.000_p1", parent / "2025-01-01_00-00-01.000_p2"
    args = TI + [f"output_root={tmp_path}"]
    assert run_training(compose(*args), newer) == 0
    time.sleep(0.05)
    assert run_training(compose(*args), older) == 0  # trained last, though named first
    other = tmp_path / "textual_inversion" / "tiny_sd15" / "shapes_rrnet"
    fresh = parent / "2025-01-02_00-00-00.000_p3"  # the default folder Hydra would have made
    assert run_training(compose(*args, "resume=latest", "trainer.max_steps=3"), fresh, default_run_dir=True) == 0
    out = capsys.readouterr().out
    assert f"resume=latest continues {older} (the newest run of method=textual_inversion" in out
    assert [p.name for p in ckpt.checkpoint_dirs(older)] == ["step-000002", "step-000003"]
    assert [p.name for p in ckpt.checkpoint_dirs(newer)] == ["step-000001", "step-000002"]
    assert not fresh.exists() and not other.exists()
    with pytest.raises(ConfigError, match=r"resume=latest: no earlier run of method=textual_inversion "
                                          r"backbone=tiny_sd15 dataset=shapes_reversion"):
        run_training(compose(*args, f"output_root={tmp_path / 'empty'}", "resume=latest"),
                     tmp_path / "empty" / "x", default_run_dir=True)
    assert not (tmp_path / "empty").exists()


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    from relgen.run import exchange_paths

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("new")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("old")
    assert exchange_paths(tmp_path / "a", tmp_path / "b")  # Linux renameat2(RENAME_EXCHANGE)
    assert (tmp_path / "b" / "f").read_text() == "new" and (tmp_path / "a" / "f").read_text() == "old"


def test_a_failed_re_export_keeps_the_old_export(tmp_path, monkeypatch):
    from relgen.run import export_run

    assert run_training(compose(*TI), tmp_path) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir()}
    assert "textual_inversion-R.safetensors" in before

    class Broken:
        def export(self, folder):
            (folder / "textual_inversion-R.safetensors").write_bytes(b"half")
            raise OSError(28, "No space left on device")

    with pytest.raises(RelgenError, match=r"export: cannot write the export \(No space left on device\)"):
        export_run(compose(*TI), tmp_path, Broken())
    assert {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir()} == before

    class Good:
        def export(self, folder):
            (folder / "textual_inversion-R.safetensors").write_bytes(b"new")
            return {"embeddings": folder / "textual_inversion-R.safetensors"}

    # a replace killed between moving the old export aside and renaming the new one in
    (tmp_path / "export").rename(tmp_path / ".export.old-1")
    export_run(compose(*TI), tmp_path, Good())
    assert (tmp_path / "export" / "textual_inversion-R.safetensors").read_bytes() == b"new"
    meta = json.loads((tmp_path / "export" / "relgen.json").read_text())
    assert meta["files"] == {"embeddings": "textual_inversion-R.safetensors"}

    class ListsItsFiles:  # a plugin that returns a list: each file is recorded under its own name
        def export(self, folder):
            (folder / "weights.safetensors").write_bytes(b"w")
            return [folder / "weights.safetensors"]

    export_run(compose(*TI), tmp_path, ListsItsFiles())
    meta = json.loads((tmp_path / "export" / "relgen.json").read_text())
    assert meta["files"] == {"weights.safetensors": "weights.safetensors"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []
