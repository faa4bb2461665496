"""train.log tells the run's story once (start, step lines, checkpoints, export, sample grid, end
with wall time), and RRNet's sample grids show λ = 0 beside the run's grid scales, labelled."""

from __future__ import annotations

import csv

from conftest import grid_cells

from relgen.testing import short_run


def test_train_log_holds_the_story_once_and_rrnet_grid_has_lambda_zero(tmp_path, monkeypatch):
    import os

    import torch

    import relgen.grid

    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # the caller's count; the run uses trainer.num_threads instead
    monkeypatch.setattr(os, "getloadavg", lambda: (97.0, 50.0, 20.0))  # a machine busier than its cores
    headers = []
    real = relgen.grid.labelled_grid
    monkeypatch.setattr(relgen.grid, "labelled_grid",
                        lambda rows, **kw: headers.append(kw["column_labels"]) or real(rows, **kw))
    run = short_run(tmp_path / "run", "method=rrnet", "backbone=tiny_sd15", "dataset=shapes_rrnet",
                    "dataset.relations=[circle above square,star below cross]", "trainer.max_steps=4",
                    "trainer.checkpoint_every=2", "trainer.status_every=2", "trainer.sample_at_end=true",
                    "method.sample_steps=1", "method.grid_scales=[0.5,1]", f"trainer.num_threads={threads}")
    try:
        assert torch.get_num_threads() == threads + 1  # the caller's count is back after the run
    finally:
        torch.set_num_threads(threads)
    messages = [line.split("] - ", 1)[1] for line in (run / "train.log").read_text().splitlines()]
    assert len(messages) == len(set(messages)), messages  # no line twice
    assert sum("rrnet: the dataset holds 2 relations" in m for m in messages) == 1  # logged before the file existed

    def index(start: str) -> int:
        (i,) = [n for n, m in enumerate(messages) if m.startswith(start)]
        return i

    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    step_lines = [m.split(" · ") for m in messages if m.startswith("step ")]
    assert [s[0] for s in step_lines] == ["step 2/4", "step 4/4"]  # every trainer.status_every steps
    for parts, row in zip(step_lines, (rows[1], rows[3])):
        assert parts[1] == f"loss {float(row['loss']):.4f}" and parts[2] == f"lr {float(row['lr']):.2e}"
    # the busy-machine warning, logged before train.log existed, is in it; the run used trainer.num_threads
    assert index(f"relgen: warning: the machine's load is 97.0 (1-minute average) on {os.cpu_count()} cores") == 1
    assert messages[index("relgen: run ")].endswith(f"on cpu, {threads} CPU threads")
    order = [index(f"relgen: run {run}: method=rrnet backbone=tiny_sd15 dataset=shapes_rrnet, 4 steps"),
             index("relgen: loading backbone tiny_sd15"), index("step 2/4"),
             index(f"relgen: step 2: checkpoint {run / 'checkpoints' / 'step-000002'}"), index("step 4/4"),
             index(f"relgen: step 4: checkpoint {run / 'checkpoints' / 'step-000004'}"),
             index(f"relgen: step 4: export {run / 'export'}"),
             index(f"relgen: step 4: rendering the sample grid {run / 'samples' / 'final.png'} (2 prompts x 1 images, "
                   "1 denoising steps)"),
             index(f"relgen: step 4: sample grid {run / 'samples' / 'final.png'}"),
             index("relgen: trained rrnet on tiny_sd15 for 4 steps in "), index("  export ")]
    assert order == sorted(order)
    assert "(wall time; training " in messages[order[-2]]

    # the grid: rows ARB and BRA (one seed), columns λ = 0 (the base model) then the grid scales
    assert headers == [["lambda = 0 (base model)", "lambda = 0.5", "lambda = 1"]]
    assert grid_cells(run / "samples" / "final.png") == (2, 3)


def test_train_log_ends_with_why_a_run_stopped(tmp_path, monkeypatch):
    import re

    import pytest

    from relgen.errors import RelgenError
    from relgen.train.loop import Trainer

    def refuse(self):
        raise RelgenError(f"step {self.step}: refused for the test")

    monkeypatch.setattr(Trainer, "save", refuse)
    with pytest.raises(RelgenError, match="^step 1: refused for the test$"):
        short_run(tmp_path / "run", "method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion")
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert "][relgen][INFO] - step 1/2 · loss " in lines[-2]  # the step's line came before
    assert re.fullmatch(r"\[[^]]+\]\[relgen\]\[INFO\] - relgen: stopped after \d+\.\d s \(wall time\): error: step 1: "
                        r"refused for the test", lines[-1]), lines[-1]
