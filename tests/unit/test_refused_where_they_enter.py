"""Bad numbers, tokens and files are refused where they enter: every loader refuses damaged or
non-finite tensors and tokens training refuses, generation settings are checked before anything
loads, prompts without the run's token are warned about, and relgen.evaluate fails fast on
missing metric weights, rebuilds a damaged score cache and scores relworld runs offline."""

import json
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from relgen.errors import ConfigError, RelgenError
from relgen.run import run_training
from relgen.testing import compose, load_tiny

TI = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
      "method.batch_size=1", "method.grad_accum=1", "trainer.sample_at_end=false", "trainer.max_steps=1",
      "trainer.report_to=[]"]
EMBEDS = "textual_inversion-R.safetensors"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert run_training(compose(*TI), run) == 0
    return run


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_a_truncated_export_is_one_line_naming_it(run, capsys):
    import relgen
    from relgen.generate import main

    path = run / "export" / EMBEDS
    path.write_bytes(path.read_bytes()[:60])  # a copy that stopped half-way
    with pytest.raises(RelgenError) as info:
        relgen.load(run)
    text = str(info.value)
    assert text.startswith(f"{path}: cannot be read as exported embeddings (")
    assert text.endswith("the file is damaged or incomplete (a truncated copy or download): copy it again, or "
                         "export the run again (resume=latest in its folder)")
    assert "\n" not in text
    assert main([f"run_dir={run}", "prompt=a cat <R> a stone"]) == 2
    assert capsys.readouterr().err.strip() == f"relgen: error: {text}"


def test_a_nan_export_is_refused_by_the_loader(run):
    import relgen

    path = run / "export" / EMBEDS
    rows = load_file(str(path))
    rows["<R>"][3] = float("nan")
    save_file(rows, str(path), metadata={"placeholder_token": "<R>", "format": "relgen-ti"})
    with pytest.raises(RelgenError, match=rf"^{path}: exported embeddings: tensor '<R>' holds NaN or infinite "
                                          r"values, so it would render black or noise; use weights from before "
                                          r"training diverged"):
        relgen.load(run)


def test_an_all_nan_rrnet_network_is_not_imported(tmp_path):
    from relgen.methods.rrnet.artifact import RRNetArtifact
    from relgen.methods.rrnet.gnn import RelationGAT

    state = {k: torch.full_like(v, float("nan")) for k, v in RelationGAT(32, 32, hidden=8, heads=2).state_dict().items()}
    path = tmp_path / "gat_placed"
    torch.save(state, path)
    with pytest.raises(RelgenError, match=rf"^{path}: RRNet network: tensor '.+' \(and {len(state) - 1} more\) holds "
                                          r"NaN or infinite values"):
        RRNetArtifact.from_official(path, width=32, hidden=8, heads=2)


def test_a_token_training_refuses_is_refused_by_import_and_apply(tmp_path):
    from relgen.import_official import import_official
    from relgen.methods.reversion.importer import import_official_embeds

    file = tmp_path / "learned_embeds.bin"
    torch.save({"and": torch.zeros(32)}, file)
    with pytest.raises(RelgenError, match=rf"^{file}: its token 'and' already reads as the existing token 'and</w>' "
                                          r"of the backbone's tokenizer; training refuses such a token"):
        import_official("reversion", str(file), "tiny_sd15", str(tmp_path / "imported"))
    assert not (tmp_path / "imported").exists()
    # a file read some other way meets the same check when it is applied to a pipeline
    art = import_official_embeds(file)
    pipe = load_tiny("tiny_sd15").pipeline()
    with pytest.raises(RelgenError, match=rf"^{file}: token 'and' already reads as the existing token 'and</w>' of "
                                          r"the pipeline's text_encoder tokenizer; training refuses such a token"):
        art.apply(pipe)


def test_a_placeholder_that_is_a_piece_of_other_words_is_refused():
    from transformers import CLIPTokenizer

    from relgen.backbones.base import placeholder_conflict
    from relgen.backbones.configs import config_folder as _config_folder

    cfg = compose("backbone=relworld").backbone
    tok = CLIPTokenizer.from_pretrained(str(_config_folder(cfg, None) / "tokenizer"))
    assert placeholder_conflict(tok, "ing") == ("is a piece of the existing token 'ting</w>' (and 3 more) and would "
                                                "be captured inside those words")
    assert placeholder_conflict(tok, "<R>") is None and placeholder_conflict(tok, "<S>") is None
    # what it prevents: an added 'ing' splits words that hold it
    assert "ing" in tok.tokenize("ting")[0]
    bb = load_tiny("relworld")
    with pytest.raises(ConfigError, match=r"placeholder token 'ing' is a piece of the existing token 'ting</w>'"):
        bb.add_placeholder_tokens(["ing"], "and")


@pytest.mark.parametrize("field, value, message", [
    ("height", 500, "relgen.generate: height=500 must be a multiple of 8 (the VAE's downsampling factor), "
                    "e.g. height=496"),
    ("guidance", float("nan"), "relgen.generate: guidance=nan must be a finite number >= 0 (classifier-free "
                               "guidance scale, e.g. 7.5; 1 or less turns guidance off)"),
    ("steps", "abc", "relgen.generate: steps='abc' must be a whole number >= 1"),
    ("num_images", 0, "relgen.generate: num_images=0 must be a whole number >= 1"),
])
def test_generation_settings_are_checked_before_anything_loads(field, value, message, tmp_path):
    from dataclasses import replace

    from relgen.generate import GenerationOptions, generate_from_run
    from relgen.validation import check_generation_options

    opts = replace(GenerationOptions(), **{field: value})
    with pytest.raises(ConfigError) as info:
        check_generation_options(opts)
    assert str(info.value) == message
    with pytest.raises(ConfigError, match=message.split(" must")[0]):  # not even the run folder is read
        generate_from_run(str(tmp_path / "no-such-run"), ["a cat"], opts)


def test_rrnet_lambda_values_are_numbers():
    from relgen.methods.rrnet.artifact import lambda_values

    assert lambda_values([0, "0.5", 1], "method_options.scales") == [0.0, 0.5, 1.0]
    assert lambda_values(0.6, "method_options.scale") == [0.6]
    with pytest.raises(ConfigError, match=r"^method_options.scales: 'abc' is not a finite number; give λ values "
                                          r"such as method_options.scales=\[0,0.5,1\]$"):
        lambda_values(["abc"], "method_options.scales")
    with pytest.raises(ConfigError, match=r"'nan' is not a finite number"):
        lambda_values(["nan"], "method_options.scales")


def test_a_prompt_without_the_runs_token_is_warned_about(finished, tmp_path, capsys):
    from relgen.generate import GenerationOptions, generate_from_run

    opts = GenerationOptions(num_images=1, steps=1, batch_size=1)
    generate_from_run(str(finished), ["a cat <S> a stone", "a cat <R> a stone"], opts, out_dir=str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert ("relgen: warning: prompt 'a cat <S> a stone' does not contain the run's token <R>; it renders without "
            "what the run learnt") in err
    assert "'a cat <R> a stone' does not contain" not in err


def test_a_damaged_score_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    from relgen.evaluate.harness import ScoreCache

    path = tmp_path / "scores.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level("WARNING", logger="relgen"):
        store = ScoreCache(path)
    assert store.get_many(["a"]) == {}
    store.put_many([("a", "1")])
    assert store.get_many(["a", "b"]) == {"a": "1"}
    store.close()
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith("scores.sqlite.damaged-")]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_bytes().startswith(b"this is not a database")
    assert f"{path}: unreadable score cache (file is not a database); moved it to {aside[0]} and rebuilt it" in caplog.text
    assert sqlite3.connect(path).execute("SELECT value FROM scores WHERE key='a'").fetchone() == ("1",)


def test_evaluate_fails_on_missing_metric_weights_before_rendering(finished, monkeypatch):
    import relgen.generate
    from relgen.evaluate.harness import evaluate

    monkeypatch.setattr(relgen.generate, "render", lambda *a, **k: pytest.fail("rendered before the weights check"))
    with pytest.raises(ConfigError) as info:
        evaluate(run_dir=str(finished), metrics=["clip_t"], progress=False,
                 eval={"clip": {"pretrained": "openai/no-such-clip"}})
    assert str(info.value).startswith("metric clip_t: eval.clip.pretrained: 'openai/no-such-clip' is not in the "
                                      "Hugging Face cache")
    assert str(info.value).endswith("set eval.clip.pretrained= to a local folder; nothing was rendered")
    with pytest.raises(ConfigError, match=r"metric clip_t: eval.clip.pretrained=/no/such/clip: no such folder"):
        evaluate(run_dir=str(finished), metrics=["clip_t"], progress=False, eval={"clip": {"pretrained": "/no/such/clip"}})
    assert not (finished / "eval" / "cache" / "images").exists()


def test_a_relworld_rrnet_run_is_scored_offline_by_default(tmp_path):
    import numpy as np

    from relgen.evaluate.config import EvaluateConfig
    from relgen.evaluate.harness import apply_run_defaults
    from relgen.evaluate.metrics import build_metric
    from relgen.methods.rrnet.prompts import rrnet_pairs
    from relgen.evaluate.samples import Sample
    from relgen.relworld import world as rw

    cfg = EvaluateConfig()
    apply_run_defaults(cfg, SimpleNamespace(meta={"backbone": {"name": "relworld"}}, method="rrnet"))
    assert (cfg.metrics, cfg.prompts) == (["relworld"], "rrnet_pairs")
    inversion = EvaluateConfig()
    apply_run_defaults(inversion, SimpleNamespace(meta={"backbone": {"name": "relworld"}}, method="reversion"))
    assert (inversion.metrics, inversion.prompts) == (["relworld"], "relworld_relation")
    other = EvaluateConfig()
    apply_run_defaults(other, SimpleNamespace(meta={"backbone": {"name": "sd15"}}, method="reversion"))
    assert (other.metrics, other.prompts) == (["clip_t", "clip_r"], "reversion_benchmark")
    # a relworld ReVersion run's relation ('inside' by default), in relworld's words, both orders
    from relgen.relworld.prompt_set import relworld_relation, run_relation

    (tmp_path / "config.yaml").write_text("dataset:\n  relations: []\n")
    assert run_relation(tmp_path) == "inside"
    inside = relworld_relation("inside")
    assert len(inside) == 16 and len({p.id for p in inside}) == 16
    assert (inside[0].text, inside[0].readable, inside[0].objects) == (
        "a cyan diamond {} a green cross", "a cyan diamond inside a green cross",
        {"a": ["diamond", "cyan"], "b": ["cross", "green"]})
    assert (inside[1].text, inside[1].order) == ("a green cross {} a cyan diamond", 1)

    # the pair of relworld's RRNet data, as relation.json records it
    relation = {"A": "square", "R": "above", "B": "circle", "ARB": "a cyan square is above a red circle",
                "BRA": "a red circle is above a cyan square", "backbone": "relworld"}
    arb, bra = rrnet_pairs(relation)
    assert (arb.objects, arb.relation) == ({"a": ["square", "cyan"], "b": ["circle", "red"]}, "above")
    assert (bra.objects, bra.relation) == ({"a": ["circle", "red"], "b": ["square", "cyan"]}, "above")
    assert rrnet_pairs({**relation, "backbone": "sd21_base"})[0].objects is None
    # relworld's detector reads a scene drawn as ARB says as right for ARB and wrong for BRA
    spec = rw.WorldSpec()
    scene = rw.sample_scene(np.random.default_rng(0), spec, "above", ("square", "cyan"), ("circle", "red"))
    from PIL import Image

    image = Image.fromarray(scene.render()[0])
    metric = build_metric("relworld", device=torch.device("cpu"))
    right, wrong = metric.score([Sample(arb, 0, "method", image), Sample(bra, 0, "method", image)])
    assert right.values["relation_accuracy"] == 1.0 and wrong.values["relation_accuracy"] == 0.0
