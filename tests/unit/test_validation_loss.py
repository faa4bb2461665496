"""The validation loss every run reports: fixed batches, no effect on training, the objective."""

import csv
import json
from pathlib import Path

import pytest
import torch

from relgen.errors import ConfigError
from relgen.run import run_training
from relgen.testing import compose
from relgen.validation import validate

RRNET = ["method=rrnet", "backbone=tiny_sd21", "dataset=shapes_rrnet", "trainer=debug", "trainer.sample_at_end=false"]
TI = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
      "trainer.sample_at_end=false"]


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_validating_during_training_changes_nothing_it_trains(tmp_path):
    """RRNet keeps a data schedule position in the method: validation draws its own batches and
    gives the position back, so a run validated every step trains bit for bit like one that is not."""
    plain, validated = tmp_path / "plain", tmp_path / "validated"
    assert run_training(compose(*RRNET), plain) == 0
    assert run_training(compose(*RRNET, "trainer.validate_every=1", "trainer.val_batches=2"), validated) == 0
    assert (plain / "metrics.csv").read_text() == (validated / "metrics.csv").read_text()
    from relgen.train import checkpoint as ckpt

    sa = ckpt.load_checkpoint(plain / "checkpoints" / "step-000002")
    sb = ckpt.load_checkpoint(validated / "checkpoints" / "step-000002")
    for part in ("method_state", "optimizer", "lr_scheduler"):
        assert _same(sa[part], sb[part]), part
    # the training generator, which draws all of a step's data, noise and timesteps
    assert torch.equal(sa["rng"]["generator"], sb["rng"]["generator"])
    rows = _csv(validated / "validation.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    # val_loss is RRNet's positive denoising term, every logged term is kept next to it
    assert all(r["val_loss"] == r["val/loss_pos"] for r in rows) and "val/loss_neg" in rows[0]
    assert [r["step"] for r in _csv(plain / "validation.csv")] == ["2"]  # at the end only
    summary = json.loads((validated / "summary.json").read_text())
    assert summary["objective"] == {"name": "val_loss", "value": float(rows[-1]["val_loss"]), "direction": "minimize",
                                    "step": 2, "val_batches": 2, "val_seed": 1234}
    assert summary["status"] == "completed"


def test_the_validation_batches_do_not_depend_on_the_run_seed(tmp_path):
    """With nothing moved (lr 1e-30 changes no float32 value) two seeds train on different draws but validate on the same
    batches: equal validation losses, different training losses."""
    runs = {}
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        assert run_training(compose(*TI, "method.lr=1e-30", f"seed={seed}", "trainer.val_batches=2"), run) == 0
        runs[seed] = (_csv(run / "metrics.csv")[0]["loss"], _csv(run / "validation.csv")[-1]["val_loss"])
    assert runs[0][0] != runs[1][0]
    assert runs[0][1] == runs[1][1]
    # a different validation seed draws other batches
    other = tmp_path / "other"
    assert run_training(compose(*TI, "method.lr=1e-30", "trainer.val_batches=2", "trainer.val_seed=7"), other) == 0
    assert _csv(other / "validation.csv")[-1]["val_loss"] != runs[0][1]


@pytest.mark.parametrize("override, message", [
    ("trainer.validate_every=0", "trainer.validate_every=0 must be >= 1 (steps) or null"),
    ("trainer.val_batches=0", "trainer.val_batches=0 must be >= 1"),
])
def test_bad_validation_settings_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose(*TI, override))


def test_a_relgen_evaluate_metric_of_the_export_is_the_objective(tmp_path):
    """trainer.objective=clip_t: the final export is scored with relgen.evaluate (a tiny CLIP here)
    and summary.json's objective is the run's clip_t in that report, maximised."""
    from omegaconf import OmegaConf

    from relgen.evaluate import tiny

    clip = tiny.write_tiny_clip(tmp_path / "clip", words=["red", "circle", "blue", "square"])
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"name": "shapes", "prompts": [
        {"text": "red circle {} blue square", "readable": "red circle above blue square", "a": "red circle",
         "b": "blue square", "predicate": "above"}]}))
    cfg = compose(*TI, "trainer.objective=clip_t")
    cfg.trainer.objective_eval = OmegaConf.create({"prompts": str(prompts), "num_images": 2, "steps": 2,
                                                   "eval": {"device": "cpu", "clip": {"pretrained": str(clip)}}})
    run = tmp_path / "run"
    assert run_training(cfg, run) == 0
    summary = json.loads((run / "summary.json").read_text())
    objective = summary["objective"]
    report = json.loads(Path(objective["report"]).read_text())
    assert [c["name"] for c in report["conditions"]] == [objective["condition"]]  # no base condition
    assert objective["value"] == report["results"][objective["condition"]]["clip_t"]["clip_t"]["value"]
    assert (objective["name"], objective["direction"], objective["step"]) == ("clip_t.clip_t", "maximize", 2)
    assert summary["val_loss"] == float(_csv(run / "validation.csv")[-1]["val_loss"])  # still recorded


@pytest.mark.parametrize("objective, message", [
    ("clip", "trainer.objective='clip': accepted: val_loss or <metric>[.<output>] with a relgen.evaluate metric: "),
    ("detector_relation.accuracy", "trainer.objective='detector_relation.accuracy': metric detector_relation "
                                   "reports object_accuracy, relation_accuracy"),
])
def test_an_unknown_metric_objective_is_one_line(objective, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(compose(*TI, f"trainer.objective={objective}"))


def test_with_an_ema_the_validation_scores_the_averaged_weights(tmp_path, monkeypatch):
    from relgen.train.loop import Trainer

    seen = []
    real = Trainer.validation_losses

    def also_raw(self):
        averaged = real(self)
        ema, self.ema = self.ema, None  # the same pass on the raw trained tensors
        try:
            raw = real(self)
        finally:
            self.ema = ema
        seen.append((averaged["val_loss"], raw["val_loss"]))
        return averaged

    monkeypatch.setattr(Trainer, "validation_losses", also_raw)
    run = tmp_path / "run"
    assert run_training(compose(*TI, "trainer.ema_decay=0.5", "method.lr=0.05"), run) == 0
    (averaged, raw), = seen  # one validation, at the end
    assert averaged != raw
    assert float(_csv(run / "validation.csv")[-1]["val_loss"]) == averaged
    assert json.loads((run / "summary.json").read_text())["objective"]["value"] == averaged
