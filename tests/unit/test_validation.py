"""relgen.validation: every value that can be checked without weights fails at once, in one line."""

from __future__ import annotations

import time

import pytest

from relgen.errors import ConfigError
from relgen.testing import compose
from relgen.validation import validate


@pytest.mark.parametrize("override, message", [
    ("method.timestep_sampler=focal", "method.timestep_sampler='focal' is not one of ['uniform', 'relation_focal']"),
    ("method.lr_scheduler=cosine_warm", "method.lr_scheduler='cosine_warm' is not one of ['linear', 'cosine'"),
    ("trainer.mixed_precision=fp8", "trainer.mixed_precision='fp8' is not one of ['no', 'fp16', 'bf16']"),
    ("backbone.inference_scheduler=heun", "backbone.inference_scheduler='heun' is not one of ['ddim', 'ddpm', 'dpm'"),
    ("backbone.dtype=half", "backbone.dtype='half' is not one of"),
    ("backbone.prediction_type=sample", "backbone.prediction_type='sample' is not one of ['epsilon', 'v_prediction']"),
])
def test_string_options_against_their_allowed_values(override, message):
    with pytest.raises(ConfigError) as info:
        validate(compose(override))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_hub_weights_neither_cached_nor_reachable_fail_in_seconds(monkeypatch):
    import relgen.hub as hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    started = time.time()
    with pytest.raises(ConfigError) as info:
        validate(compose("backbone=sd15"))
    assert time.time() - started < 10
    line = str(info.value)
    assert "backbone.pretrained: 'runwayml/stable-diffusion-v1-5' is not in the Hugging Face cache" in line
    assert "cannot be reached" in line and "backbone.pretrained=/path/to/diffusers-folder" in line
    # with HF_HUB_OFFLINE the message says so
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        validate(compose("backbone=sd15"))


def test_cached_weights_with_an_unreachable_hub_switch_the_run_offline(monkeypatch):
    import relgen.hub as hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(hub, "is_cached", lambda repo, name, revision=None: repo == "runwayml/stable-diffusion-v1-5")
    validate(compose("backbone=sd15"))
    assert constants.HF_HUB_OFFLINE is True  # loading reads the cache, with no retries


def test_an_unreachable_endpoint_is_detected_with_one_short_connection():
    import relgen.hub as hub

    started = time.time()
    assert hub.hub_reachable("http://127.0.0.1:9", timeout=1.0) is False  # nothing listens on the discard port
    assert time.time() - started < 5


def test_local_weights_and_method_paths(tmp_path):
    with pytest.raises(ConfigError, match=f"backbone.pretrained={tmp_path}/nope: no such file or folder"):
        validate(compose("backbone=sd15", f"backbone.pretrained={tmp_path}/nope"))
    with pytest.raises(ConfigError, match="not a diffusers folder"):
        validate(compose("backbone=sd15", f"backbone.pretrained={tmp_path}"))
    from relgen.backbones.loading import materialize_tiny

    folder = materialize_tiny(compose("backbone=tiny_sdxl").backbone)
    ok = ["method=relationbooth", "backbone=sdxl", f"backbone.pretrained={folder}"]
    validate(compose(*ok))
    with pytest.raises(ConfigError, match=f"method.ms_adapter={tmp_path}/ms_adapter.bin: file not found"):
        validate(compose(*ok, f"method.ms_adapter={tmp_path}/ms_adapter.bin"))
    with pytest.raises(ConfigError, match="method.clipself_checkpoint=.*epoch_6.pt: file not found"):
        validate(compose(*ok, f"method.clipself_checkpoint={tmp_path}/epoch_6.pt"))
    with pytest.raises(ConfigError, match="method.image_encoder=.*not a transformers model folder"):
        validate(compose(*ok, f"method.image_encoder={tmp_path}"))
