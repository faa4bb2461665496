"""Textual inversion: only the placeholder rows train, and the export loads in diffusers."""

import pytest
import torch
from safetensors.torch import load_file

from relgen.testing import compose, load_tiny


def _method(backbone_name: str, tmp_path):
    from relgen.data.registry import open_dataset
    from relgen.methods.textual_inversion.method import TextualInversion

    cfg = compose("method=textual_inversion", f"backbone={backbone_name}", "dataset=shapes_reversion")
    bb = load_tiny(backbone_name)
    return TextualInversion(cfg.method, bb, open_dataset(cfg.dataset).load()), bb, cfg


@pytest.mark.parametrize("backbone_name", ["tiny_sd15", "tiny_sdxl"])
def test_only_placeholder_rows_change_and_diffusers_loads_the_export(backbone_name, tmp_path):
    from accelerate import Accelerator

    from relgen.train.loop import Trainer

    method, bb, cfg = _method(backbone_name, tmp_path)
    before = [s.encoder.get_input_embeddings().weight.detach().clone() for s in bb.slots]
    others = {n: p.detach().clone() for s in bb.slots for n, p in s.encoder.named_parameters()
              if "token_embedding" not in n}
    trainer = Trainer(cfg, tmp_path, Accelerator(), bb, method)
    for _ in range(2):
        trainer.run_step()
    files = method.export(tmp_path)
    assert {role: p.name for role, p in files.items()} == {"embeddings": "textual_inversion-R.safetensors"}
    path = files["embeddings"]
    for slot, old, ids in zip(bb.slots, before, method.embeds.token_ids):
        new = slot.encoder.get_input_embeddings().weight
        changed = (new != old).any(dim=1).nonzero().flatten().tolist()
        assert changed == ids  # exactly the placeholder row, in every encoder
    for s in bb.slots:
        for n, p in s.encoder.named_parameters():
            if n in others:
                assert torch.equal(p, others[n]), n

    exported = load_file(str(path))
    pipe = load_tiny(backbone_name).pipeline()  # a fresh pipeline of the same weights
    if bb.family == "sd":
        assert set(exported) == {"<R>"} and exported["<R>"].shape == (bb.slots[0].width,)
        pipe.load_textual_inversion(str(path), token="<R>")  # the model card's line
        pairs = [(pipe.tokenizer, pipe.text_encoder, bb.slots[0])]
    else:
        assert set(exported) == {"clip_l", "clip_g"}
        assert exported["clip_l"].shape == (1, bb.slots[0].width) and exported["clip_g"].shape == (1, bb.slots[1].width)
        pipe.load_textual_inversion(exported["clip_l"], token="<R>", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(exported["clip_g"], token="<R>", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
        pairs = [(pipe.tokenizer, pipe.text_encoder, bb.slots[0]), (pipe.tokenizer_2, pipe.text_encoder_2, bb.slots[1])]
    for tok, enc, slot in pairs:
        tid = tok.convert_tokens_to_ids("<R>")
        trained = slot.encoder.get_input_embeddings().weight[slot.tokenizer.convert_tokens_to_ids("<R>")]
        assert torch.equal(enc.get_input_embeddings().weight[tid], trained)


def test_every_placeholder_row_gets_gradient_and_nothing_else(tmp_path):
    from relgen.plugin import StepContext
    from relgen.train.timesteps import make_timestep_sampler

    method, bb, cfg = _method("tiny_sdxl", tmp_path)
    gen = torch.Generator().manual_seed(0)
    out = method.training_step(method.next_batch(gen), StepContext(gen, make_timestep_sampler("uniform", 1000)))
    out.loss.backward()
    for rows in method.embeds.rows:
        assert rows.grad is not None and rows.grad.abs().sum() > 0
    for slot in bb.slots:
        assert slot.encoder.get_input_embeddings().weight.grad is None
    assert all(p.grad is None for p in bb.unet.parameters())


def test_initializer_row_and_sample_prompts(tmp_path):
    method, bb, _ = _method("tiny_sd15", tmp_path)
    w = bb.slots[0].encoder.get_input_embeddings().weight
    and_id = bb.slots[0].tokenizer.convert_tokens_to_ids("and</w>")
    assert torch.equal(method.embeds.rows[0][0], w[and_id])
    assert all("<R>" in p for p in method.sample_prompts()) and len(method.sample_prompts()) == 2
