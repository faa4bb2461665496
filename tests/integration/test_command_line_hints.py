"""Hints for peers' flags and for quoting <token> values; one exit-status rule; the busy-machine warning."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from relgen import cli
from relgen.hints import FLAG_KEYS, command_line_hints, flag_hint, quoting_hint
from relgen.testing import compose, run_relgen
from relgen.train.threads import busy_machine_warning


def test_peer_flags_name_relgen_keys_that_exist():
    assert flag_hint("--max_train_steps=20") == ("--max_train_steps=20: relgen takes key=value overrides; the "
                                                 "diffusers/kohya flag --max_train_steps is trainer.max_steps=20")
    assert flag_hint("--learning_rate", "1e-4").endswith("--learning_rate is method.lr=1e-4")
    assert flag_hint("--network-dim=8").endswith("--network_dim is method.rank=8")  # kohya spelling
    assert flag_hint("--gradient_checkpointing").endswith("is trainer.gradient_checkpointing=true")
    assert flag_hint("--report_to=wandb").endswith("is trainer.report_to=[wandb]")
    assert "not --flags" in flag_hint("--frobnicate=1")
    assert flag_hint("--multirun") is None and flag_hint("method.lr=1") is None  # Hydra's own flags, overrides
    # every key a hint names is a key of relgen's config (top level, or of one of the methods)
    configs = [compose(f"method={m}") for m in ("textual_inversion", "reversion", "rrnet", "relationbooth")]
    missing = object()
    for flag, key in FLAG_KEYS.items():
        if key.startswith("hydra."):
            continue
        assert any(OmegaConf.select(c, key, default=missing) is not missing for c in configs), (flag, key)


def test_quoting_hint_for_angle_brackets():
    assert quoting_hint("method.placeholder_token=<cat>") == (
        "method.placeholder_token=<cat>: Hydra reads < and > only inside quotes; quote the value for Hydra and the "
        "whole override for the shell: 'method.placeholder_token=\"<cat>\"'")
    assert quoting_hint('method.placeholder_token="<cat>"') is None and quoting_hint("method.lr=1e-4") is None
    assert command_line_hints(["method=rrnet", "--seed", "3", "x=<y>"]) == [
        "--seed: relgen takes key=value overrides; the diffusers/kohya flag --seed is seed=3",
        "x=<y>: Hydra reads < and > only inside quotes; quote the value for Hydra and the whole override for the "
        "shell: 'x=\"<y>\"'"]


def test_hydra_refusals_exit_2_failures_exit_1(monkeypatch, capsys):
    def refused():
        raise SystemExit(1)  # how Hydra ends after reporting a bad override or an unknown key

    monkeypatch.setattr(cli, "_task_started", False)
    with pytest.raises(SystemExit) as exc:
        cli.run_hydra_app(refused, ["--max_train_steps=5"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "relgen: hint: --max_train_steps=5: relgen takes key=value overrides; the diffusers/kohya flag "
        "--max_train_steps is trainer.max_steps=5"]

    def failed():
        cli.task_started()
        raise SystemExit(1)  # Hydra's report of an unexpected exception inside the task

    with pytest.raises(SystemExit) as exc:
        cli.run_hydra_app(failed, ["--max_train_steps=5"])
    assert exc.value.code == 1 and capsys.readouterr().err == ""


def test_command_line_refusals_exit_2_with_the_hint():
    proc = run_relgen("method.placeholder_token=<cat>", "dry_run=true", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "LexerNoViableAltException" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "relgen: hint: method.placeholder_token=<cat>: Hydra reads < and > only inside quotes; quote the value for "
        "Hydra and the whole override for the shell: 'method.placeholder_token=\"<cat>\"'")
    proc = run_relgen("--max_train_steps=20", "dry_run=true", timeout=300)
    assert proc.returncode == 2 and "unrecognized arguments: --max_train_steps=20" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].endswith("--max_train_steps is trainer.max_steps=20")


def test_busy_machine_warning(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 0.0, 0.0))
    assert busy_machine_warning(None) is None  # load within the cores
    monkeypatch.setattr(os, "getloadavg", lambda: (7.25, 0.0, 0.0))
    line = busy_machine_warning(None)
    assert line.startswith("the machine's load is 7.2 (1-minute average) on 2 cores")
    assert line.endswith("set trainer.num_threads= to a share of the cores (e.g. trainer.num_threads=1)")
    assert "trainer.num_threads=" not in busy_machine_warning(1)  # already set: no advice


def test_num_threads_is_checked():
    from relgen.errors import ConfigError
    from relgen.validation import validate

    with pytest.raises(ConfigError, match=r"^trainer.num_threads=0: must be an integer >= 1 or null$"):
        validate(compose("backbone=tiny_sd15", "dataset=shapes_reversion", "trainer.num_threads=0"))
