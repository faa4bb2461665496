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


def test_named_prompt_sets():
    from relgen.errors import ConfigError
    from relgen.evaluate.config import REVERSION_RELATION_WORDS
    from relgen.methods.reversion.prompts import reversion_benchmark
    from relgen.methods.rrnet.prompts import rrnet_pairs

    every = reversion_benchmark(REVERSION_RELATION_WORDS)
    assert len(every) == 10 * 100 and len({p.id for p in every}) == 1000
    painted = reversion_benchmark(REVERSION_RELATION_WORDS, "painted_on", limit=3)
    assert [p.text for p in painted] == ["guitar {} paper", "guitar {} canvas", "guitar {} wall"]
    first = painted[0]
    assert (first.readable, first.a, first.b, first.predicate, first.relation, first.twin) == (
        "guitar painted on paper", "guitar", "paper", "painted on", "painted_on", "paper painted on guitar")
    assert first.readable[slice(*first.predicate_span())] == "painted on"
    with pytest.raises(ConfigError, match="'paintedon' is not a ReVersion benchmark relation"):
        reversion_benchmark(REVERSION_RELATION_WORDS, "paintedon")
    ab, ba = rrnet_pairs({"A": "circle", "R": "above", "B": "square", "ARB": "a circle is above a square",
                          "BRA": "a square is above a circle"})
    assert (ab.order, ba.order) == (0, 1) and ab.pair == ba.pair == ("a circle is above a square",
                                                                      "a square is above a circle")
    assert (ba.a, ba.b) == ("square", "circle")
    with pytest.raises(ConfigError, match="rrnet_pairs needs the run's relation words"):
        rrnet_pairs({"R": "above"})
