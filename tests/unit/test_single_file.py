"""Checkpoints as users have them: one original-layout file (.safetensors, .ckpt), an fp16-only
diffusers folder; the architecture read from the keys, the shipped configs and tokenizer."""

import json
import logging

import pytest
import torch

from relgen.errors import ConfigError, RelgenError
from relgen.testing import compose, write_single_file

PRESET = {"tiny_sd15": "sd15", "tiny_sd21": "sd21", "tiny_sdxl": "sdxl"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each tiny backbone as .safetensors and .ckpt, with the diffusers folder of the same weights."""
    root = tmp_path_factory.mktemp("single")
    out = {}
    for name in PRESET:
        for ext in (".safetensors", ".ckpt"):
            path = root / f"{name}{ext}"
            out[(name, ext)] = (path, write_single_file(path, name))
    return out


@pytest.mark.parametrize("ext", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("name", list(PRESET))
def test_single_file_loads_the_same_weights_as_the_folder(files, name, ext, caplog):
    from relgen.backbones.loading import load_backbone

    path, folder = files[(name, ext)]
    preset = PRESET[name]
    ref = load_backbone(compose(f"backbone={preset}", f"backbone.pretrained={folder}").backbone)
    with caplog.at_level(logging.INFO, logger="relgen"):
        bb = load_backbone(compose(f"backbone={preset}", f"backbone.pretrained={path}",
                                   f"backbone.single_file_config={folder}").backbone)
    arch = {"sd15": "SD 1.x", "sd21": "SD 2.x", "sdxl": "SDXL"}[preset]
    assert f"{path.name} is an {arch} checkpoint" in caplog.text
    modules = [("unet", ref.unet, bb.unet), ("vae", ref.vae, bb.vae)]
    modules += [(s.key, s.encoder, t.encoder) for s, t in zip(ref.slots, bb.slots)]
    for what, a, b in modules:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), what
        assert all(torch.equal(sa[k], sb[k]) for k in sa), what
    assert bb.prediction_type == ref.prediction_type == compose(f"backbone={preset}").backbone.prediction_type
    ids = bb.tokenize(["a cat on a book"])
    assert torch.equal(bb.encode_text(ids).hidden, ref.encode_text(ids).hidden)


def test_architecture_and_prediction_read_from_the_file(tmp_path, files):
    from relgen.backbones.single_file import detect

    got = {name: detect(files[(name, ".safetensors")][0]) for name in PRESET}
    assert [(i.architecture, i.prediction_type) for i in got.values()] == [("sd1", None), ("sd2", None), ("sdxl", None)]
    assert detect(files[("tiny_sd15", ".ckpt")][0]).architecture == "sd1"
    marked = tmp_path / "v.safetensors"
    write_single_file(marked, "tiny_sd21", v_pred_marker=True)
    assert (detect(marked).prediction_type, detect(marked).prediction_evidence) == ("v_prediction",
                                                                                    "the file's v_pred marker")
    spec = tmp_path / "spec.safetensors"
    write_single_file(spec, "tiny_sd21", metadata={"modelspec.architecture": "stable-diffusion-v2-768-v"})
    assert detect(spec).prediction_type == "v_prediction"
    eps = tmp_path / "eps.safetensors"
    write_single_file(eps, "tiny_sd21", metadata={"modelspec.prediction_type": "epsilon"})
    assert detect(eps).prediction_type == "epsilon"


def test_wrong_backbone_is_refused_in_one_line(tmp_path, files):
    from relgen.backbones.loading import load_backbone
    from relgen.validation import check_weights

    xl = files[("tiny_sdxl", ".safetensors")][0]
    with pytest.raises(ConfigError) as err:
        load_backbone(compose("backbone=sd15", f"backbone.pretrained={xl}").backbone)
    msg = str(err.value)
    assert "\n" not in msg and str(xl) in msg and "an SDXL checkpoint" in msg and "use backbone=sdxl" in msg
    sd2 = files[("tiny_sd21", ".ckpt")][0]
    with pytest.raises(ConfigError, match="an SD 2.x checkpoint .* use backbone=sd21_base"):
        load_backbone(compose("backbone=sd15", f"backbone.pretrained={sd2}").backbone)
    v = tmp_path / "v.safetensors"
    write_single_file(v, "tiny_sd21", v_pred_marker=True)
    with pytest.raises(ConfigError) as err:  # before any weight loads: the dry-run checks refuse it too
        check_weights(compose("backbone=sd21_base", f"backbone.pretrained={v}"))
    msg = str(err.value)
    assert "\n" not in msg and "records prediction type v_prediction (the file's v_pred marker)" in msg
    assert "use backbone=sd21 (768, v-prediction)" in msg
    check_weights(compose("backbone=sd21", f"backbone.pretrained={v}"))  # the matching preset passes
    eps = tmp_path / "eps.safetensors"
    write_single_file(eps, "tiny_sd21", metadata={"modelspec.prediction_type": "epsilon"})
    with pytest.raises(ConfigError, match=r"records prediction type epsilon \(modelspec.prediction_type in the "
                                          r"file's metadata\) .*; use backbone=sd21_base \(512, epsilon\)$"):
        check_weights(compose("backbone=sd21", f"backbone.pretrained={eps}"))


def test_unreadable_files_are_named(tmp_path, files):
    from relgen.backbones.single_file import detect

    import argparse

    evil = tmp_path / "evil.ckpt"  # an arbitrary Python object, which weights_only refuses to unpickle
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": argparse.Namespace(x=1)}, evil)
    with pytest.raises(RelgenError, match="does not unpickle"):
        detect(evil)
    unet_only = tmp_path / "unet.safetensors"
    folder = files[("tiny_sd15", ".safetensors")][1]
    unet_only.write_bytes((folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(RelgenError, match="diffusers model file: point backbone.pretrained at the whole"):
        detect(unet_only)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 7)
    with pytest.raises(RelgenError, match="broken.safetensors: cannot read the checkpoint"):
        detect(broken)


def test_shipped_configs_are_the_published_architectures():
    """The shipped configs build the published UNets (parameter counts of the released models) and
    the published text encoders, and name the right scheduler and prediction type."""
    from diffusers import UNet2DConditionModel

    from relgen.backbones.single_file import CONFIGS
    from relgen.backbones.tiny import _UNET

    millions = {"sd15": 859.52, "sd21_base": 865.91, "sd21": 865.91, "sdxl": 2567.46}
    tiny_full = {"sd15": "sd15", "sd21_base": "sd21", "sd21": "sd21", "sdxl": "sdxl"}
    for name, count in millions.items():
        config = json.loads((CONFIGS / name / "unet" / "config.json").read_text())
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
            ref = UNet2DConditionModel(**_UNET[("full", tiny_full[name])])
        assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 2) == count, name
        assert {k: v.shape for k, v in unet.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    sched = {n: json.loads((CONFIGS / n / "scheduler" / "scheduler_config.json").read_text())
             for n in millions}
    assert [(s["_class_name"], s.get("prediction_type", "epsilon")) for s in sched.values()] == [
        ("PNDMScheduler", "epsilon"), ("PNDMScheduler", "epsilon"), ("DDIMScheduler", "v_prediction"),
        ("EulerDiscreteScheduler", "epsilon")]
    widths = {n: [json.loads((CONFIGS / n / sub / "config.json").read_text())["hidden_size"]
                  for sub in ("text_encoder", "text_encoder_2") if (CONFIGS / n / sub).is_dir()] for n in millions}
    assert widths == {"sd15": [768], "sd21_base": [1024], "sd21": [1024], "sdxl": [768, 1280]}


def test_shipped_tokenizer_gives_the_published_clip_ids():
    from relgen.backbones.single_file import CONFIGS, shipped_tokenizers

    toks = shipped_tokenizers(CONFIGS / "sdxl")
    first, second = toks["tokenizer"], toks["tokenizer_2"]
    assert len(first) == 49408
    assert first("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert first("a book is placed on a bowl").input_ids == [49406, 320, 1116, 533, 9729, 525, 320, 3814, 49407]
    assert (first.pad_token_id, second.pad_token_id) == (49407, 0)  # SD 2.x / bigG pad with "!"
    assert shipped_tokenizers(CONFIGS / "sd21")["tokenizer"].pad_token_id == 0


def test_fp16_only_folder_loads_with_and_without_variant(tmp_path, caplog):
    from relgen.backbones.loading import load_backbone
    from relgen.testing import load_tiny

    tiny = load_tiny("tiny_sd15")  # the same seeded weights as the saved ones, kept at float32
    load_tiny("tiny_sd15").pipeline().to(torch.float16).save_pretrained(tmp_path / "m", variant="fp16")
    for module in ("unet", "vae", "text_encoder"):
        files = sorted(p.name for p in (tmp_path / "m" / module).glob("*.safetensors"))
        assert files and all(".fp16." in f for f in files), files
    with caplog.at_level(logging.INFO, logger="relgen"):
        auto = load_backbone(compose("backbone=sd15", f"backbone.pretrained={tmp_path / 'm'}").backbone)
    assert "holds only 'fp16' weight files; loading variant=fp16" in caplog.text
    named = load_backbone(compose("backbone=sd15", f"backbone.pretrained={tmp_path / 'm'}",
                                  "backbone.variant=fp16").backbone)
    for bb in (auto, named):
        assert bb.unet.dtype == torch.float32
        for key, value in tiny.unet.state_dict().items():  # fp16 on disk, read back at float32
            assert torch.equal(bb.unet.state_dict()[key], value.half().float()), key
        assert torch.equal(bb.slots[0].encoder.get_input_embeddings().weight,
                           tiny.slots[0].encoder.get_input_embeddings().weight.half().float())


@pytest.mark.slow
@pytest.mark.parametrize("preset,tiny,ext", [("sd15", "tiny_sd15", ".safetensors"),
                                              ("sd21_base", "tiny_sd21", ".ckpt"),
                                              ("sd21", "tiny_sd21", ".safetensors"),
                                              ("sdxl", "tiny_sdxl", ".safetensors")])
def test_full_size_files_load_with_the_shipped_configs(tmp_path, preset, tiny, ext, caplog):
    """Random weights in the published architectures, written in the original layout (fp16, as model
    sites ship them), load through backbone.pretrained= alone: no hub, no single_file_config."""
    from safetensors.torch import load_file

    from relgen.backbones.loading import load_backbone

    path = tmp_path / f"{preset}{ext}"
    folder = write_single_file(path, tiny, size="full", dtype=torch.float16)
    with caplog.at_level(logging.INFO, logger="relgen"):
        bb = load_backbone(compose(f"backbone={preset}", f"backbone.pretrained={path}").backbone)
    assert f"configs: the published {preset} configs shipped with relgen" in caplog.text
    assert bb.prediction_type == compose(f"backbone={preset}").backbone.prediction_type
    modules = {"unet": bb.unet, "vae": bb.vae, "text_encoder": bb.slots[0].encoder}
    if preset == "sdxl":
        modules["text_encoder_2"] = bb.slots[1].encoder
    for sub, module in modules.items():
        ref = {}
        for part in sorted((folder / sub).glob("*.safetensors")):
            ref.update(load_file(str(part)))
        got = module.state_dict()
        ref = {k[len("text_model."):] if k.startswith("text_model.") and k not in got else k: v for k, v in ref.items()}
        assert set(ref) <= set(got), (sub, sorted(set(ref) - set(got))[:3])
        for key, value in ref.items():  # fp16 in the file, the backbone's float32 in memory
            assert torch.equal(got[key], value.half().to(got[key].dtype)), (sub, key)


@pytest.mark.parametrize("preset", ["sd15", "sd21", "sdxl"])
def test_original_layout_of_the_published_architectures_maps_back_exactly(preset):
    """Every key of the published architectures (built on the meta device from the shipped configs:
    no memory, no weights) survives the trip to the original layout and back through diffusers' own
    single-file converters, with its shape."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from relgen.backbones.original_layout import original_state_dict
    from relgen.backbones.single_file import CONFIGS

    folder = CONFIGS / preset
    arch = {"sd15": "sd1", "sd21": "sd2", "sdxl": "sdxl"}[preset]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((folder / "vae" / "config.json").read_text()))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))]
        if arch == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")))
    original = original_state_dict(arch, unet, vae, encoders)
    prefixes = {"sd1": "cond_stage_model.", "sd2": "cond_stage_model.", "sdxl": "conditioner."}[arch]
    assert sum(k.startswith(prefixes) for k in original) > 0
    back = {"unet": convert_ldm_unet_checkpoint(original, unet.config),
            "vae": convert_ldm_vae_checkpoint(original, vae.config)}
    if arch == "sd2":
        back["text"] = [convert_open_clip_checkpoint(encoders[0], original, prefix="cond_stage_model.model.")]
    else:
        back["text"] = [convert_ldm_clip_checkpoint(original)]
        if arch == "sdxl":
            back["text"].append(convert_open_clip_checkpoint(encoders[1], original,
                                                             prefix="conditioner.embedders.1.model."))
    for name, module, got in (("unet", unet, back["unet"]), ("vae", vae, back["vae"])):
        want = {k: v.shape for k, v in module.state_dict().items()}
        assert {k: v.shape for k, v in got.items()} == want, name
    for encoder, got in zip(encoders, back["text"]):
        want = {k: v.shape for k, v in encoder.state_dict().items()}
        got = {(k[len("text_model."):] if k.startswith("text_model.") and not hasattr(encoder, "text_model") else k):
               v.shape for k, v in got.items() if not k.endswith("position_ids")}
        assert got == want
