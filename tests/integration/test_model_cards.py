"""Model cards run as written: every python block of the card of a tiny run of each method is
executed as it stands (no name supplied, no line changed) and makes an image."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relgen.testing import compose, short_run

CASES = {
    "textual_inversion": ("method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion"),
    "textual_inversion-sdxl": ("method=textual_inversion", "backbone=tiny_sdxl", "dataset=shapes_reversion"),
    "reversion": ("method=reversion", "backbone=tiny_sd15", "dataset=shapes_reversion"),
    "rrnet": ("method=rrnet", "backbone=tiny_sd21", "dataset=shapes_rrnet"),
    "relationbooth": ("method=relationbooth", "backbone=tiny_sdxl", "dataset=shapes_dreamrelation",
                      "method.cal_max_side_fraction=0.5"),
}
#: Blocks each card holds: one way of loading per block (RelationBooth: relgen's whole model, the LoRA alone).
BLOCKS = {"relationbooth": 2}


def _blocks(card: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", card, flags=re.S | re.M)


#: The SDXL token block runs in the slow suite (the same diffusers lines run in test_textual_inversion).
_SLOW = {"textual_inversion-sdxl"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in _SLOW else c for c in sorted(CASES)])
def test_card_blocks_run_as_written(case, tmp_path, monkeypatch):
    from PIL import Image

    from relgen.backbones.loading import materialize_tiny

    method = case.split("-")[0]
    overrides = (*CASES[case], "trainer.max_steps=1")
    run = short_run(tmp_path / "run", *overrides)
    card = (run / "export" / "README.md").read_text()
    # the base model is the folder the tiny backbone's weights were saved to, a real diffusers folder
    (base,) = re.findall(r"^base_model: (.*)$", card, flags=re.M)
    assert base == str(materialize_tiny(compose(*overrides).backbone).resolve())
    assert (Path(base) / "model_index.json").is_file()

    blocks = _blocks(card)
    assert len(blocks) == BLOCKS.get(method, 1), blocks
    monkeypatch.chdir(run)  # the card says: run it from the run folder
    for code in blocks:
        assert f'from_pretrained("{base}")' in code
        scope: dict = {"__name__": "__main__"}
        exec(compile(code, str(run / "export" / "README.md"), "exec"), scope)  # as written: nothing supplied
        image = scope["image"]
        assert isinstance(image, Image.Image) and image.size == (64, 64)
        assert max(hi - lo for lo, hi in image.getextrema()) > 0  # a picture, not one flat colour
        with Image.open(run / f"{method}-sample.png") as saved:
            assert saved.size == (64, 64)
        pipe = scope["pipe"]
        if case == "textual_inversion-sdxl":  # pooled outputs read the EOS row, not the added token's
            for enc, tok in ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2)):
                eos = getattr(enc, "text_model", enc).eos_token_id
                assert eos == tok.eos_token_id < tok.convert_tokens_to_ids("<R>")
        peft = getattr(pipe.unet, "peft_config", None) or {}
        assert len(peft) == (1 if method == "relationbooth" else 0)  # the LoRA is loaded once, never twice
        (run / f"{method}-sample.png").unlink()


def test_relworld_card_names_the_shipped_weights_real_folder():
    from diffusers import StableDiffusionPipeline
    from omegaconf import OmegaConf

    import relgen.relworld
    from relgen.export import model_card

    backbone = OmegaConf.to_container(compose("backbone=relworld").backbone, resolve=True)
    assert backbone["pretrained"] == "pkg://relgen.relworld/weights"  # what neither the hub nor diffusers reads
    meta = {"method": "reversion", "backbone": backbone, "method_config": {"placeholder_token": "<R>"},
            "files": {"embeddings": "reversion-R.safetensors"}, "step": 3, "dataset": "relworld_reversion"}
    card = model_card(meta)
    real = str((Path(relgen.relworld.__file__).parent / "weights").resolve())
    assert re.findall(r"^base_model: (.*)$", card, flags=re.M) == [real]
    (code,) = _blocks(card)
    assert f'pipe = StableDiffusionPipeline.from_pretrained("{real}")' in code
    assert 'pipe.load_textual_inversion("export/reversion-R.safetensors", token="<R>")' in code
    assert "num_inference_steps=25, guidance_scale=5, height=64, width=64" in code  # relworld's own settings
    pipe = StableDiffusionPipeline.from_pretrained(real)  # the reference is one diffusers reads
    assert pipe.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("words", [(), ("A=circle", "R=above", "B=square")])
def test_imported_rrnet_card_runs_as_written(words, tmp_path, monkeypatch):
    import torch

    from relgen.import_official import main as import_main
    from relgen.methods.rrnet.gnn import RelationGAT

    torch.manual_seed(0)
    official = tmp_path / "gat_above"
    torch.save(RelationGAT(32, 32, hidden=512, heads=2).state_dict(), official)  # RRNet's released layout
    out = tmp_path / "imported"
    assert import_main(["method=rrnet", f"file={official}", "backbone=tiny_sd21", f"run_dir={out}", *words]) == 0
    (code,) = _blocks((out / "export" / "README.md").read_text())
    prompt = "a circle is above a square" if words else "a book is placed in a bowl"  # the words the prompt holds
    assert f"run.pipeline_inputs(pipe, ['{prompt}']" in code
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["image"].size == (64, 64)
