"""The relworld pretraining's bind stage end to end on a few images: the text encoder is trained
and exported only with --bind-text-lr, a finished stage resumes to the same export, and a resume
that changes whether the text encoder trains stops with one line; the bind_text stage's encoder is
what the bind stage starts from and what is exported."""

from __future__ import annotations

import json

import pytest
import torch

from relgen.relworld import model as rb

SHORT = ["--num-images", "24", "--batch", "4", "--bind-steps", "2", "--bind-probe-every", "2",
         "--bind-probe-scenes", "1", "--warmup", "1", "--bind-decay-steps", "0", "--bind-high-t-share", "0.5"]


def _text_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(next((folder / "text_encoder").glob("*.safetensors"))))


@pytest.mark.slow  # about 30 s: two short pretraining runs
@pytest.mark.skipif(not rb.is_trained(), reason="relgen/relworld/weights/ is not built")
def test_bind_stage_trains_the_text_encoder_only_when_asked(relworld_script, tmp_path, capsys):
    pretrain = relworld_script("pretrain")
    shipped = rb.shipped_model_folder()
    base_text = _text_weights(shipped)

    frozen = tmp_path / "frozen"
    assert pretrain.main(["--work", str(tmp_path / "w0"), "--init-from", str(shipped), "--out", str(frozen),
                          *SHORT]) == 0
    assert all(torch.equal(base_text[k], v) for k, v in _text_weights(frozen).items())

    work, out = tmp_path / "w1", tmp_path / "trained"
    args = ["--work", str(work), "--init-from", str(shipped), "--out", str(out), "--bind-text-lr", "1e-3", *SHORT]
    assert pretrain.main(args) == 0
    trained = _text_weights(out)
    assert any(not torch.equal(base_text[k], v) for k, v in trained.items())
    record = json.loads((out / "relworld_pretraining.json").read_text())
    assert record["stage"] == "bind" and record["bind_step"] == 2
    assert record["args"]["bind_text_lr"] == 1e-3 and record["args"]["bind_high_t_share"] == 0.5

    # a finished stage resumes to the same export
    assert pretrain.main(args) == 0
    assert all(torch.equal(trained[k], v) for k, v in _text_weights(out).items())

    # the checkpoint trained the text encoder: resuming with it frozen is refused in one line
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        pretrain.main(["--work", str(work), "--init-from", str(shipped), "--out", str(out),
                       *SHORT[:5], "4", *SHORT[6:]])
    assert "--bind-text-lr" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow  # about 20 s: one short pretraining run and a refused resume
@pytest.mark.skipif(not rb.is_trained(), reason="relgen/relworld/weights/ is not built")
def test_bind_text_stage_exports_its_text_encoder_and_pins_the_bind_stage_to_it(relworld_script, tmp_path):
    pretrain = relworld_script("pretrain")
    shipped = rb.shipped_model_folder()
    base_text = _text_weights(shipped)
    work, out = tmp_path / "w", tmp_path / "laid_out"
    args = ["--work", str(work), "--init-from", str(shipped), "--out", str(out), "--bind-layout-steps", "2",
            "--text-batch", "4", *SHORT]
    assert pretrain.main(args) == 0
    exported = _text_weights(out)
    staged = torch.load(work / "bind_text.pt", weights_only=True)
    assert staged["step"] == 2
    # the export carries the bind_text stage's encoder, not the base one
    assert all(torch.equal(staged["text_encoder"][k], v) for k, v in exported.items())
    assert any(not torch.equal(base_text[k], v) for k, v in exported.items())
    record = json.loads((out / "relworld_pretraining.json").read_text())
    assert record["args"]["bind_layout_steps"] == 2 and record["args"]["bind_layout_anchor"] == 1.0
    assert json.loads((work / "progress.json").read_text())["cpu_s"]["bind_text"] > 0

    # the bind stage started from that encoder: resuming it with another one is refused in one line
    with pytest.raises(SystemExit) as err:
        pretrain.main([*args[:7], "3", *args[8:]])
    assert "--bind-layout-steps" in str(err.value) and "\n" not in str(err.value)
