"""Exports: the model card, intermediate exports that survive rotation, relgen.load(step=);
official checkpoints of every kind imported from the command line into loadable run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import relgen
from relgen.errors import RelgenError
from relgen.import_official import main as import_main
from relgen.testing import short_run


def _one_error(capsys, code: int) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("relgen: error:")]
    assert code == 2 and len(err) == 1, err
    return err[0]


def _card_code(card: str) -> str:
    """The python block of a model card's "Loading it in diffusers" section."""
    return card.split("## Loading it in diffusers")[1].split("```python\n")[1].split("```")[0]


def _as_old_export(folder: Path, renames: dict[str, str]) -> None:
    """Turn ``folder`` into the layout relgen wrote before file names carried the token or relation:
    the old fixed names, and ``files`` in relgen.json a plain list of them."""
    for new, old in renames.items():
        (folder / new).rename(folder / old)
    meta = json.loads((folder / "relgen.json").read_text())
    meta["files"] = [renames.get(name, name) for name in meta["files"].values()]
    (folder / "relgen.json").write_text(json.dumps(meta, indent=2))


def test_model_card_and_intermediate_exports_survive_checkpoint_rotation(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline
    from omegaconf import OmegaConf

    from relgen.backbones.loading import materialize_tiny
    from relgen.config import BackboneConfig

    run = short_run(tmp_path / "run", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer.max_steps=4",
                    "method.export_every=2", "trainer.keep_checkpoints=1", "method.grad_accum=1")
    export = run / "export"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004"]  # rotated
    assert sorted(p.name for p in export.glob("step-*")) == ["step-000002"]  # survived rotation and the final export
    for folder, step in ((export, 4), (export / "step-000002", 2)):
        meta = json.loads((folder / "relgen.json").read_text())
        assert meta["step"] == step and meta["files"] == {"embeddings": "textual_inversion-R.safetensors"}
        assert (folder / "textual_inversion-R.safetensors").is_file()
        card = (folder / "README.md").read_text()
        assert f"| steps | {step} |" in card and "| method | `textual_inversion` |" in card
        assert "| files | `textual_inversion-R.safetensors` |" in card
        assert "tiny_sd15" in card and "shapes_reversion" in card and "revision" in card
        # each card loads its own folder's file, from the run folder
        where = "export" if step == 4 else "export/step-000002"
        assert f'pipe.load_textual_inversion("{where}/textual_inversion-R.safetensors", token="<R>")' in card
    final, second = relgen.load(run), relgen.load(run, step=2)
    assert second.export_dir == export / "step-000002" and final.export_dir == export
    assert not torch.equal(final.artifact.rows["text_encoder"], second.artifact.rows["text_encoder"])
    with pytest.raises(RelgenError, match="no export of step 3; this run has step-000002"):
        relgen.load(run, step=3)

    # the card's own lines, run from the run folder, load the token into a plain diffusers pipeline
    bcfg = OmegaConf.merge(OmegaConf.structured(BackboneConfig), final.meta["backbone"])
    pipe = StableDiffusionPipeline.from_pretrained(materialize_tiny(bcfg))
    monkeypatch.chdir(run)
    code = _card_code((export / "README.md").read_text()).split("image = pipe(")[0]
    scope = {"pipe": pipe}
    exec(code, scope)
    pipe = scope["pipe"]  # the card's program loads its own base-model pipeline
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("<R>")]
    assert torch.equal(row, final.artifact.rows["text_encoder"][0])

    # an export written before the names were recorded (learned_embeds.safetensors, files a list) still loads
    _as_old_export(export / "step-000002", {"textual_inversion-R.safetensors": "learned_embeds.safetensors"})
    old = relgen.load(run, step=2)
    assert old.artifact.source == export / "step-000002" / "learned_embeds.safetensors"
    assert torch.equal(old.artifact.rows["text_encoder"], second.artifact.rows["text_encoder"])
    # a recorded name whose file is gone: one line naming the file
    (export / "textual_inversion-R.safetensors").unlink()
    with pytest.raises(RelgenError, match=f"^{export / 'textual_inversion-R.safetensors'}: exported embeddings "
                                          "not found"):
        relgen.load(run)


def test_reversion_learned_embeds_bin_imports_and_generates(tmp_path, capsys):
    from relgen.generate import GenerationOptions, generate_from_run

    vector = torch.randn(32, generator=torch.Generator().manual_seed(0))
    official = tmp_path / "learned_embeds.bin"
    torch.save({"<R>": vector}, official)
    out = tmp_path / "imported"
    assert import_main(["method=reversion", f"file={official}", "backbone=tiny_sd15", f"run_dir={out}"]) == 0
    loaded = relgen.load(out)
    assert loaded.method == "reversion" and torch.equal(loaded.artifact.rows["text_encoder"][0], vector)
    assert loaded.artifact.source == out / "export" / "reversion-R.safetensors"  # the token in the name
    meta = json.loads((out / "export" / "relgen.json").read_text())
    assert meta["files"] == {"embeddings": "reversion-R.safetensors"}
    assert "| dataset | none (imported from" in (out / "export" / "README.md").read_text()
    (grid,) = generate_from_run(str(out), ["cat <R> stone"], GenerationOptions(num_images=1, steps=2))
    assert grid.name == "reversion-tiny_sd15-prompts.png"

    # the width of another backbone: one line naming the file, nothing written
    wide = tmp_path / "wide.bin"
    torch.save({"<R>": torch.zeros(768)}, wide)
    line = _one_error(capsys, import_main(["method=reversion", f"file={wide}", "backbone=tiny_sd15",
                                           f"run_dir={tmp_path / 'no'}"]))
    assert str(wide) in line and "768-wide" in line and "32-wide" in line
    assert not (tmp_path / "no").exists()
    # an existing run folder is refused
    line = _one_error(capsys, import_main(["method=reversion", f"file={official}", "backbone=tiny_sd15",
                                           f"run_dir={out}"]))
    assert "already holds files" in line


def test_rrnet_gat_imports_with_its_words(tmp_path, capsys):
    from relgen.methods.rrnet.artifact import RRNetArtifact
    from relgen.methods.rrnet.gnn import RelationGAT

    torch.manual_seed(0)
    gnn = RelationGAT(32, 32, hidden=512, heads=2)
    official = tmp_path / "gat_above"
    torch.save(gnn.state_dict(), official)
    out = tmp_path / "imported"
    code = import_main(["method=rrnet", f"file={official}", "backbone=tiny_sd21", f"run_dir={out}", "A=circle",
                        "R=above", "B=square", "ARB=a circle is above a square", "BRA=a square is above a circle"])
    assert code == 0, capsys.readouterr().err
    loaded = relgen.load(out)
    assert (loaded.artifact.relation["A"], loaded.artifact.relation["R"]) == ("circle", "above")
    assert loaded.artifact.sample_prompts() == ["a circle is above a square", "a square is above a circle"]
    theirs = RRNetArtifact.from_official(official, width=32).gnn.state_dict()
    ours = loaded.artifact.gnn.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert json.loads((out / "export" / "relgen.json").read_text())["files"] == {
        "network": "rrnet-above.safetensors", "relation": "relation.json"}
    # the layout of exports written before the names were recorded (rrnet_gat.safetensors) still loads
    _as_old_export(out / "export", {"rrnet-above.safetensors": "rrnet_gat.safetensors"})
    old = relgen.load(out).artifact.gnn.state_dict()
    assert all(torch.equal(old[k], theirs[k]) for k in theirs)
    # a file of the wrong kind: one line naming it
    wrong = tmp_path / "learned_embeds.bin"
    torch.save({"<R>": torch.zeros(32)}, wrong)
    line = _one_error(capsys, import_main(["method=rrnet", f"file={wrong}", "backbone=tiny_sd21",
                                           f"run_dir={tmp_path / 'no'}"]))
    assert str(wrong) in line and not (tmp_path / "no").exists()
    # a network of another width (SD 2.1-base's 1024 here 64) and one with other key names
    wide = tmp_path / "gat_wide"
    torch.save(RelationGAT(64, 64, hidden=512, heads=2).state_dict(), wide)
    line = _one_error(capsys, import_main(["method=rrnet", f"file={wide}", "backbone=tiny_sd21",
                                           f"run_dir={tmp_path / 'no'}"]))
    assert line.startswith(f"relgen: error: {wide}: key 'conv1.mods.link_oe.fc.weight' has shape (1024, 64)")
    assert "takes 64-wide text features and backbone tiny_sd21's are 32-wide" in line
    renamed = tmp_path / "gat_renamed"
    torch.save({k.replace("conv1.", "layer1."): v for k, v in gnn.state_dict().items()}, renamed)
    line = _one_error(capsys, import_main(["method=rrnet", f"file={renamed}", "backbone=tiny_sd21",
                                           f"run_dir={tmp_path / 'no'}"]))
    assert line.startswith(f"relgen: error: {renamed}: missing key 'conv1.")
    assert "-wide" not in line and not (tmp_path / "no").exists()


def test_relationbooth_lora_and_ms_adapter_import(tmp_path, capsys):
    from relgen.methods.relationbooth.convert import _read_adapter_file

    run = short_run(tmp_path / "trained", "method=relationbooth", "backbone=tiny_sdxl", "dataset=shapes_dreamrelation",
                    "method.cal_max_side_fraction=0.5", "trainer.max_steps=1")
    export = run / "export"
    adapter = tmp_path / "ms_adapter.bin"  # MS-Diffusion's layout: nested dicts, torch.save
    official = dict(_read_adapter_file(export / "relationbooth-above-image-branch.safetensors"))
    # as DreamRelation's copy saves them: the resampler's keys prefixed with "resampler."
    official["image_proj"] = {f"resampler.{k}": v for k, v in official["image_proj"].items()}
    torch.save(official, adapter)
    lora = export / "relationbooth-above-lora.safetensors"  # named after the items' shared predicate
    encoder = f"method.image_encoder={export / 'image_encoder'}"
    heads = "method.resampler_heads=4"  # the tiny branch's (method.tiny.resampler_heads)

    both = tmp_path / "dreamrelation"
    assert import_main(["method=relationbooth", f"file={lora}", f"method.ms_adapter={adapter}", encoder, heads,
                        "method.relation_name=hug", "backbone=tiny_sdxl", f"run_dir={both}"]) == 0, \
        capsys.readouterr().err
    assert (both / "export" / "relationbooth-hug-lora.safetensors").read_bytes() == lora.read_bytes()
    a = load_file(str(both / "export" / "relationbooth-hug-image-branch.safetensors"))
    b = load_file(str(export / "relationbooth-above-image-branch.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert relgen.load(both).artifact.lora_file == both / "export" / "relationbooth-hug-lora.safetensors"
    card = (both / "export" / "README.md").read_text()
    assert "alone is not the whole model" in card
    assert 'pipe.load_lora_weights("export", weight_name="relationbooth-hug-lora.safetensors")' in card

    branch_only = tmp_path / "ms_diffusion"
    assert import_main(["method=relationbooth", f"file={adapter}", encoder, heads, "backbone=tiny_sdxl",
                        f"run_dir={branch_only}"]) == 0, capsys.readouterr().err
    art = relgen.load(branch_only).artifact
    # an official branch names no relation and no method.relation_name is given
    assert art.lora_file is None
    assert art.adapter_file == branch_only / "export" / "relationbooth-relation-image-branch.safetensors"
    assert "load_lora_weights" not in (branch_only / "export" / "README.md").read_text()
    # the LoRA without its branch, and an adapter for another UNet width: one line each
    line = _one_error(capsys, import_main(["method=relationbooth", f"file={lora}", "backbone=tiny_sdxl",
                                           f"run_dir={tmp_path / 'no'}"]))
    assert str(lora) in line and "method.ms_adapter=" in line
    line = _one_error(capsys, import_main(["method=relationbooth", f"file={adapter}", encoder, heads, "backbone=tiny_sd15",
                                           f"run_dir={tmp_path / 'no'}"]))
    assert str(adapter) in line and "64-wide" in line and "32-wide" in line
    assert not (tmp_path / "no").exists()

    # wrongly shaped files of both kinds: one line naming the file (and the key), nothing written
    from safetensors.torch import save_file

    def adapter_with(name, edit):
        raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in official.items()}
        edit(raw)
        torch.save(raw, tmp_path / name)
        return tmp_path / name

    proc_key = sorted(official["ms_adapter"])[0]  # e.g. "1.to_k_ip.weight"
    cases = {
        adapter_with("narrow_proc.bin", lambda r: r["ms_adapter"].update({proc_key: torch.zeros(64, 8)})):
            f"key 'ms_adapter.{proc_key}' has shape (64, 8) but",
        adapter_with("bad_resampler.bin", lambda r: r["image_proj"].update(
            {"resampler.proj_out.weight": torch.zeros(64, 8)})):
            "image_proj (resampler) weights do not fit together (size mismatch for proj_out.weight",
        adapter_with("flat_dummy.bin", lambda r: r.update(dummy_image_tokens=torch.zeros(4, 64))):
            "'dummy_image_tokens' is (4, 64); expected (1, num_dummy_tokens, cross_attention_dim)",
        adapter_with("tensor_proj.bin", lambda r: r.update(image_proj=torch.zeros(3))):
            "'image_proj' is a Tensor, not a state dict of tensors",
    }
    for path, message in cases.items():
        line = _one_error(capsys, import_main(["method=relationbooth", f"file={path}", encoder, heads,
                                               "backbone=tiny_sdxl", f"run_dir={tmp_path / 'no'}"]))
        assert line.startswith(f"relgen: error: {path}: ") and message in line, line
    official_lora = load_file(str(lora))
    up = next(k for k in sorted(official_lora) if k.endswith("attn2.to_k.lora.up.weight"))
    loras = {
        "narrow_lora.safetensors": ({**official_lora, up: torch.zeros(8, official_lora[up].shape[1])},
                                    f"key '{up}' has shape (8, "),
        "renamed_lora.safetensors": ({k.replace("unet.down_blocks.", "unet.input_blocks."): v
                                      for k, v in official_lora.items()}, "names no linear layer of the UNet"),
    }
    for name, (state, message) in loras.items():
        save_file(state, str(tmp_path / name))
        line = _one_error(capsys, import_main(["method=relationbooth", f"file={tmp_path / name}",
                                               f"method.ms_adapter={adapter}", encoder, heads, "backbone=tiny_sdxl",
                                               f"run_dir={tmp_path / 'no'}"]))
        assert line.startswith(f"relgen: error: {tmp_path / name}: ") and message in line, line
    assert not (tmp_path / "no").exists()
    # a LoRA that gets past the import (here swapped in afterwards) still fails in one line naming it
    from relgen.testing import load_tiny

    art = relgen.load(both).artifact
    art.lora_file = tmp_path / "narrow_lora.safetensors"
    with pytest.raises(RelgenError) as info:
        art.apply(load_tiny("tiny_sdxl").pipeline())
    assert str(info.value).startswith(f"{art.lora_file}: the LoRA does not fit this pipeline's UNet (size mismatch")
    assert "\n" not in str(info.value)
