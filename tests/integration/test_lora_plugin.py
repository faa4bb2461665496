"""A third-party method reaches parity with the built-ins through the plugin contract alone.

``tests/fixtures/relgen_lora_plugin`` is installed like any package (pip, entry point) and
goes through everything a built-in does: the method contract of :mod:`relgen.testing` (dry-run
checks, exact resume, generation), its own pre-load check, ``relgen.import_official`` of its
official format, ``relgen.evaluate`` with its own conditions, and its export loads in stock
diffusers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from relgen import registry
from relgen.errors import ConfigError
from relgen.testing import check_method, compose

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "relgen_lora_plugin"
ARGS = ("method=unet_lora", "backbone=tiny_sd15", "dataset=shapes_reversion")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(FIXTURE)], capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    sys.path.insert(0, str(site))
    try:
        assert registry.refresh_plugins() == ["relgen_lora"]
        yield site
    finally:
        registry.forget_plugin("relgen_lora")
        sys.path.remove(str(site))


@pytest.fixture(scope="module")
def trained(plugin, tmp_path_factory):
    return check_method(tmp_path_factory.mktemp("contract"), *ARGS)  # dry run, exact resume, generation


def test_the_plugin_is_listed_and_refuses_a_bad_rank_before_loading(plugin, tmp_path):
    from relgen.run import run_training

    assert registry.METHODS.entries["unet_lora"].origin == "plugin relgen_lora"
    with pytest.raises(ConfigError, match=r"^method\.rank=0 must be at least 1$"):
        run_training(compose("trainer=debug", "dry_run=true", "method.rank=0", *ARGS), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_export_loads_in_stock_diffusers_as_relgen_applies_it(trained):
    from diffusers import StableDiffusionPipeline

    from relgen.api import load
    from relgen.backbones.loading import materialize_tiny

    run = load(trained["run"])
    folder = materialize_tiny(compose("backbone=tiny_sd15").backbone)
    file = run.export_dir / run.meta["files"]["lora"]

    def image(scale, via_relgen=False):
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
        if via_relgen:
            run.apply(pipe)
            inputs = run.artifact.pipeline_inputs(pipe, ["a sks b"], lora_scale=scale)
        else:
            pipe.load_lora_weights(str(file.parent), weight_name=file.name)
            inputs = {"prompt": ["a sks b"], "cross_attention_kwargs": {"scale": scale}}
        out = pipe(**inputs, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
        return out.images[0]

    stock = image(1.0)
    assert (stock == image(1.0, via_relgen=True)).all()
    assert not (stock == image(0.0)).all()  # the LoRA changes the image


def test_import_official_and_evaluate(trained, tmp_path, capsys):
    from relgen.api import load
    from relgen.evaluate import tiny
    from relgen.evaluate.harness import evaluate
    from relgen.import_official import main as import_main

    straight = load(trained["run"])
    official = tmp_path / "pytorch_lora_weights.safetensors"
    official.write_bytes((straight.export_dir / straight.meta["files"]["lora"]).read_bytes())
    assert import_main(["method=unet_lora", f"file={official}", "backbone=tiny_sd15", f"run_dir={tmp_path / 'imp'}",
                        "method.trigger=sks"]) == 0
    imported = load(tmp_path / "imp")
    assert imported.meta["files"] == {"lora": "unet_lora-sks-lora.safetensors"}
    assert (imported.export_dir / "unet_lora-sks-lora.safetensors").read_bytes() == official.read_bytes()

    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 7)},
              str(bad))
    capsys.readouterr()
    assert import_main(["method=unet_lora", f"file={bad}", "backbone=tiny_sd15", f"run_dir={tmp_path / 'no'}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"relgen: error: {bad}: 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight' does "
        "not fit backbone tiny_sd15's UNet; import it with the backbone it was trained on")
    assert not (tmp_path / "no").exists()

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"name": "lora", "prompts": [
        {"text": "red circle {} blue square", "readable": "red circle above blue square", "a": "red circle",
         "b": "blue square", "predicate": "above"}]}))
    clip = tiny.write_tiny_clip(tmp_path / "clip", words=["red", "circle", "blue", "square", "above", "sks"])
    out = evaluate(run_dir=str(tmp_path / "imp"), prompts=str(prompts), num_images=1, progress=False, steps=2,
                   metrics=["clip_t"], eval={"device": "cpu", "clip": {"pretrained": str(clip)}})
    res = json.loads((out / "results.json").read_text())
    assert [c["name"] for c in res["conditions"]] == ["scale=0", "scale=1"] and res["baseline"] == "scale=0"
    assert [c["options"] for c in res["conditions"]] == [{"lora_scale": 0.0}, {"lora_scale": 1.0}]
