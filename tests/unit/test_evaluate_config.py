"""The evaluate app's primary config and its nested metric-model groups."""

from __future__ import annotations

import pytest


def test_the_evaluate_config_composes_with_nested_model_groups():
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    import relgen.evaluate.config as ec

    with initialize_config_module(config_module="relgen.conf", version_base="1.3"):
        cfg = compose("evaluate", overrides=["eval/judge=qwen2_vl_7b", "eval.detector.threshold=0.2",
                                             "metrics=[clip_t,vlm_relation]"])
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ec.EvaluateConfig), cfg))
        assert obj.eval.judge.pretrained == "Qwen/Qwen2-VL-7B-Instruct" and obj.eval.judge.dtype == "bfloat16"
        assert obj.eval.judge.questions == list(ec.RRNET_QUESTIONS)
        assert obj.eval.clip.pretrained == "openai/clip-vit-large-patch14"
        assert obj.eval.dino.pretrained == "facebook/dino-vits16"
        assert obj.eval.detector.threshold == 0.2 and obj.eval.fid.features == "inception"
        assert obj.metrics == ["clip_t", "vlm_relation"]
        with pytest.raises(ConfigCompositionException):
            compose("evaluate", overrides=["eval.detector.threshold=high"])
        with pytest.raises(ConfigCompositionException):
            compose("evaluate", overrides=["eval.judge.temperature=0"])
