"""Config drift on resume: every key classed, applied changes applied for real, refused ones
listed in one line; nothing to train is said; a non-finite update never reaches a checkpoint."""

import csv
import json
import math

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from relgen.errors import ConfigError, RelgenError
from relgen.run import run_training
from relgen.testing import compose
from relgen.train import checkpoint as ckpt
from relgen.train import drift

TI = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
      "method.batch_size=1", "method.grad_accum=1", "trainer.sample_at_end=false"]


def _schema_keys() -> set[str]:
    import relgen.config as c
    from relgen.methods.relationbooth.config import RelationBoothConfig
    from relgen.methods.reversion.config import ReVersionConfig
    from relgen.methods.rrnet.config import RRNetConfig
    from relgen.methods.textual_inversion.config import TextualInversionConfig

    def walk(node: DictConfig, prefix: str) -> set[str]:
        out = set()
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
                out |= walk(child, f"{prefix}{key}.")
            else:
                out.add(f"{prefix}{key}")
        return out

    keys = set()
    groups = [("backbone", c.BackboneConfig), ("dataset", c.DatasetConfig), ("trainer", c.TrainerConfig)]
    groups += [("method", s) for s in (c.MethodConfig, TextualInversionConfig, ReVersionConfig, RRNetConfig,
                                       RelationBoothConfig)]
    for group, schema in groups:
        keys |= walk(OmegaConf.structured(schema), f"{group}.")
    run = OmegaConf.structured(c.RunConfig)
    return keys | {k for k in run.keys() if k not in ("backbone", "dataset", "method", "trainer")}


def test_every_schema_key_is_classed_exactly_once():
    keys = _schema_keys()
    assert len(keys) >= 137  # every built-in schema was walked
    unclassed = sorted(k for k in keys if drift.classify(k) == "unclassed")
    assert unclassed == [], f"class these keys in relgen/train/drift.py (REFUSE or APPLY): {unclassed}"
    both = (drift.REFUSE | drift.REFUSE_WHEN_TOGGLED) & drift.APPLY
    assert not both
    # the examples, each on the right side
    for key in ("method.name", "backbone.name", "dataset.name", "method.rank", "method.placeholder_token",
                "method.relation", "method.optimizer", "method.optimizer_args"):
        assert drift.classify(key) == "refuse", key
    for key in ("method.lr", "method.max_steps", "trainer.max_steps", "method.checkpoint_every",
                "trainer.sample_every", "trainer.noise_offset", "trainer.snr_gamma", "trainer.report_to",
                "trainer.input_perturbation"):
        assert drift.classify(key) == "apply", key


def test_compare_refuses_rank_and_ema_toggle_and_applies_the_rest():
    old = {"method": {"rank": 4, "lr": 1e-4, "new_plugin_knob": 1}, "trainer": {"ema_decay": None}}
    new = {"method": {"rank": 8, "lr": 2e-4, "new_plugin_knob": 2}, "trainer": {"ema_decay": 0.999}}
    d = drift.compare(old, new)
    assert d.refused == ["method.new_plugin_knob", "method.rank", "trainer.ema_decay"]
    assert d.unclassed == ["method.new_plugin_knob"]
    assert d.applied == {"method.lr": (1e-4, 2e-4)}
    d = drift.compare({"trainer": {"ema_decay": 0.99}}, {"trainer": {"ema_decay": 0.999}})
    assert d.refused == [] and d.applied == {"trainer.ema_decay": (0.99, 0.999)}
    # a key only one side knows (a newer version's) is not compared
    assert drift.compare({"method": {"lr": 1.0}}, {"method": {"lr": 1.0, "optimizer": "adamw"}}).refused == []


def _metrics(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _row(run_dir, step: int) -> torch.Tensor:
    path = run_dir / "checkpoints" / f"step-{step:06d}"
    return ckpt.load_checkpoint(path)["method_state"]["rows.text_encoder"][0]


def test_a_new_lr_and_max_steps_are_applied_with_the_schedule_step_kept(tmp_path, caplog):
    base = TI + ["method.lr_scheduler=linear", "trainer.max_steps=4", "trainer.checkpoint_every=2",
                 "method.scale_lr=false", "method.lr=0.01"]
    same, changed = tmp_path / "same", tmp_path / "changed"
    for run_dir in (same, changed):
        assert run_training(compose(*base), run_dir) == 0
        import shutil

        shutil.rmtree(run_dir / "checkpoints" / "step-000004")
    every = ["resume=latest", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0"]
    assert run_training(compose(*base, *every), same) == 0  # as saved: 4 steps at 0.01
    with caplog.at_level("INFO", logger="relgen"):
        assert run_training(compose(*base, *every, "trainer.max_steps=8", "method.lr=0.02"), changed) == 0
    assert "resume: method.lr changed from 0.01 to 0.02; applied from step 3" in caplog.text
    # linear decay over the new 8 steps at the new base rate, from the kept step: 0.02 * (8 - 3) / 8
    lrs = {int(r["step"]): float(r["lr"]) for r in _metrics(changed)}
    assert lrs[2] == pytest.approx(0.01 * 2 / 4, rel=1e-12)
    assert lrs[3] == pytest.approx(0.02 * 5 / 8, rel=1e-12)
    assert lrs[8] == 0.0
    # the update of step 3 really used it: Adam's step is linear in the rate, and the rate
    # of step 3 is 0.02*6/8 (changed) against 0.01*2/4 (same): 3x the step
    d_same = _row(same, 3) - _row(same, 2)
    d_changed = _row(changed, 3) - _row(changed, 2)
    assert torch.allclose(d_changed, 3 * d_same, rtol=1e-4, atol=1e-9)
    summary = json.loads((changed / "summary.json").read_text())
    assert summary["changed_on_resume"]["method.lr"] == {"checkpoint": 0.01, "now": 0.02}
    assert summary["lr"] == 0.02 and summary["resumed_at_step"] == 2


def test_changed_rank_is_refused_in_one_line_before_any_weight_loads(tmp_path):
    run_dir = tmp_path / "rb"
    step = run_dir / "checkpoints" / "step-000001"
    step.mkdir(parents=True)
    cfg = compose("method=relationbooth", "trainer=debug")
    (step / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save({"method": "relationbooth", "backbone": cfg.backbone.name, "step": 1}, step / "state.pt")
    with pytest.raises(ConfigError) as info:
        run_training(compose("method=relationbooth", "trainer=debug", "method.rank=8", "method.lora_alpha=8",
                             "method.lr=1e-3", "resume=latest"), run_dir)
    message = str(info.value)
    assert "\n" not in message
    assert "cannot resume with changed method.lora_alpha, method.rank:" in message and "method.lr" not in message


def _poison_at(monkeypatch, poisoned_step: int) -> None:
    """Make the update of step ``poisoned_step + 1`` turn the trained row to inf (the loss stays finite)."""
    from relgen.train.loop import Trainer

    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        if _poison_at.trainer.step == poisoned_step:
            with torch.no_grad():
                self.param_groups[0]["params"][0].mul_(math.inf)
        return out

    real_init = Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        _poison_at.trainer = self

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    monkeypatch.setattr(Trainer, "__init__", init)


def test_a_non_finite_update_stops_before_any_checkpoint_or_export(tmp_path, monkeypatch):
    _poison_at(monkeypatch, 0)
    with pytest.raises(RelgenError, match=r"step 1: .* is not finite after the optimizer step; stopping, "
                                          r"no checkpoint was written yet"):
        run_training(compose(*TI, "trainer.max_steps=1"), tmp_path / "run")
    assert not (tmp_path / "run" / "export").exists()
    assert ckpt.checkpoint_dirs(tmp_path / "run") == []


def test_the_error_names_the_last_finite_checkpoint(tmp_path, monkeypatch):
    _poison_at(monkeypatch, 2)  # the third update
    with pytest.raises(RelgenError, match=r"step 3: .*not finite.*the last good checkpoint is .*step-000002"):
        run_training(compose(*TI, "trainer.max_steps=4"), tmp_path)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["step-000001", "step-000002"]
    assert not ckpt.nonfinite_tensors(ckpt.load_checkpoint(ckpt.checkpoint_dirs(tmp_path)[-1]))
    assert not (tmp_path / "export").exists()
