"""Every value a user can get wrong fails right after compose, with one line naming the key and
the accepted range; ``dataset.resolution`` sets the training resolution."""

import pytest

from relgen.errors import ConfigError
from relgen.run import run_training
from relgen.testing import compose
from relgen.validation import validate

TI = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
      "method.batch_size=1", "method.grad_accum=1", "trainer.sample_at_end=false"]

BAD = [
    ("method.lr=nan", "method.lr=nan: must be a finite number"),
    ("method.lr=inf", "method.lr=inf: must be a finite number"),
    ("method.lr=-1e-4", r"method.lr=-0.0001: must be a finite number > 0"),
    ("method.lr=0", r"method.lr=0.0: must be a finite number > 0"),
    ("method.lr=1e39", r"method.lr=1e\+39: must be a finite number > 0"),
    ("method.max_steps=0", r"method.max_steps=0: must be an integer >= 1"),
    ("trainer.max_steps=-2", r"trainer.max_steps=-2: must be an integer >= 1 or null"),
    ("trainer.checkpoint_every=0", r"trainer.checkpoint_every=0: must be an integer >= 1 or null"),
    ("method.checkpoint_every=0", r"method.checkpoint_every=0: must be an integer >= 1"),
    ("trainer.sample_every=-1", r"trainer.sample_every=-1: must be an integer >= 0 or null"),
    ("trainer.log_every=0", r"trainer.log_every=0: must be an integer >= 1"),
    ("trainer.keep_checkpoints=-1", r"trainer.keep_checkpoints=-1: must be an integer >= 0"),
    ("trainer.num_samples=0", r"trainer.num_samples=0: must be an integer >= 1"),
    ("method.batch_size=0", r"method.batch_size=0: must be an integer >= 1"),
    ("method.grad_accum=0", r"method.grad_accum=0: must be an integer >= 1"),
    ("method.lr_warmup_steps=-1", r"method.lr_warmup_steps=-1: must be >= 0"),
    ("method.adam_beta1=1.0", r"method.adam_beta1=1.0: must be in \[0, 1\)"),
    ("method.adam_epsilon=0", r"method.adam_epsilon=0.0: must be > 0"),
    ("method.weight_decay=-0.1", r"method.weight_decay=-0.1: must be >= 0"),
    ("method.max_grad_norm=0", r"method.max_grad_norm=0.0: must be > 0, or null"),
    ("method.focal_alpha=nan", r"method.focal_alpha=nan: must be a finite number"),
    ("backbone.guidance_scale=inf", r"backbone.guidance_scale=inf: must be a finite number"),
    ("backbone.inference_steps=0", r"backbone.inference_steps=0: must be an integer >= 1"),
    ("method.resolution=60", r"method.resolution=60: must be a positive multiple of 8"),
    ("dataset.resolution=100", r"dataset.resolution=100: must be a positive multiple of 8"),
    ("backbone.resolution=0", r"backbone.resolution=0: must be a positive multiple of 8"),
    ("method.resolution=64 dataset.resolution=32", r"method.resolution=64 and dataset.resolution=32 disagree"),
    ("+method.sub._target_=os.system", r"method.sub._target_: relgen builds method objects from registry names"),
    ("+trainer._target_=x.Y", r"trainer._target_: relgen builds trainer objects from registry names"),
]


@pytest.fixture(scope="module")
def base_cfg():
    return compose(*TI)


def _with(cfg, override: str):
    """``cfg`` with the command-line style ``key=value`` pairs of ``override`` applied (a copy)."""
    import copy

    from omegaconf import OmegaConf, open_dict

    cfg = copy.deepcopy(cfg)
    for item in override.split():
        key, value = item.lstrip("+").split("=", 1)
        with open_dict(cfg):
            OmegaConf.update(cfg, key, yaml_value(value), force_add=item.startswith("+"))
    return cfg


def yaml_value(text: str):
    import yaml

    return {"nan": float("nan"), "inf": float("inf")}.get(text, yaml.safe_load(text))


@pytest.mark.parametrize("override,message", BAD, ids=[b[0] for b in BAD])
def test_each_bad_value_is_one_line_naming_its_key(base_cfg, override, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate(_with(base_cfg, override))
    assert "\n" not in str(info.value)


def test_bad_values_are_caught_as_the_command_line_composes_them():
    with pytest.raises(ConfigError, match=r"method.lr=nan: must be a finite number"):
        validate(compose(*TI, "method.lr=nan"))


def test_rrnet_and_relationbooth_weights_are_checked_too():
    with pytest.raises(ConfigError, match=r"method.neg_weight=nan: must be a finite number"):
        validate(compose("method=rrnet", "method.neg_weight=nan"))
    with pytest.raises(ConfigError, match=r"method.clip_mean\[1\]=inf: must be a finite number"):
        validate(compose("method=relationbooth", "method.clip_mean=[0.5,inf,0.5]"))


def test_resolution_off_64_warns_and_defaults_pass(caplog, tmp_path):
    for method in ("textual_inversion", "reversion", "rrnet", "relationbooth"):
        assert validate(compose(f"method={method}")) == []
    weights = tmp_path / "weights"  # the presets name hub weights this machine does not have
    weights.mkdir()
    (weights / "model_index.json").write_text("{}")
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    for preset, extra in (("reversion_paper", []), ("rrnet_paper", []),
                          ("relationbooth_paper", [f"method.image_encoder={encoder}",
                                                   f"method.clipself_checkpoint={weights / 'model_index.json'}"])):
        assert validate(compose(f"experiment={preset}", f"backbone.pretrained={weights}", *extra)) == []
    warnings = validate(_with(compose(*TI), "method.resolution=72"))
    assert warnings == ["method.resolution=72 is not a multiple of 64: the UNet's feature maps do not halve "
                        "evenly at every level; prefer 64"]


def test_the_unet_down_factor_is_read_from_a_local_folder(tmp_path):
    import json
    import shutil

    from conftest import local_weights

    tiny = tmp_path / "tiny"  # two UNet levels: 8 x 2 = 16
    shutil.copytree(local_weights("tiny_sd15"), tiny)
    local = ["backbone=sd15", f"backbone.pretrained={tiny}"]
    assert validate(compose(*TI, *local, "method.resolution=48")) == []
    assert validate(compose(*TI, *local, "method.resolution=72")) == [
        "method.resolution=72 is not a multiple of 16: the UNet's feature maps do not halve evenly at every "
        "level; prefer 64"]
    config = tiny / "unet" / "config.json"  # four levels, as SD 1.5's UNet: 8 x 2^3 = 64
    unet = json.loads(config.read_text())
    config.write_text(json.dumps(dict(unet, block_out_channels=[32, 64, 64, 64])))
    assert validate(compose(*TI, *local, "method.resolution=48")) == [
        "method.resolution=48 is not a multiple of 64: the UNet's feature maps do not halve evenly at every "
        "level; prefer 64"]


def test_an_invalid_lr_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="method.lr=inf"):
        run_training(compose(*TI, "method.lr=inf", "trainer.max_steps=1"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_dataset_resolution_sets_the_training_resolution(tmp_path, monkeypatch):
    import relgen.data.latents as latents

    seen = []
    real = latents.latent_dists

    def spy(backbone, paths, resolution, *args, **kwargs):
        seen.append(resolution)
        return real(backbone, paths, resolution, *args, **kwargs)

    monkeypatch.setattr(latents, "latent_dists", spy)
    assert run_training(compose(*TI, "dataset.resolution=32", "trainer.max_steps=1"), tmp_path) == 0
    assert seen == [32]
    from omegaconf import OmegaConf

    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.method.resolution == 32 and saved.dataset.resolution == 32
