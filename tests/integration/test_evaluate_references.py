"""CLIP-I and DINO take their reference images from the run's training dataset when the prompts
carry none (or from ``eval.references=<folder>``), with one clear error when it is missing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from relgen.errors import DataError
from relgen.evaluate import references as refs
from relgen.evaluate import tiny
from relgen.evaluate.config import EvalModelsConfig, EvaluateConfig
from relgen.evaluate.harness import evaluate, plan
from relgen.testing import compose, evaluation_run, synthetic_data

PROMPTS = {"name": "shapes", "prompts": [
    {"text": "red circle {} blue square", "readable": "red circle above blue square", "a": "red circle",
     "b": "blue square", "predicate": "above"},
    {"text": "green diamond {} red circle", "readable": "green diamond above red circle", "a": "green diamond",
     "b": "red circle", "predicate": "above"},
]}
WORDS = ["red", "circle", "blue", "square", "green", "diamond", "above"]


def _fake_run(folder, *overrides):
    """A run folder holding only the resolved ``config.yaml`` of ``overrides`` (what the
    references are read from)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(compose(*overrides), resolve=True))
    return folder


def test_each_layout_gives_its_reference_images(tmp_path):
    # DreamRelation layout (RelationBooth): each entity's concept images
    data = synthetic_data("shapes_dreamrelation")
    run = _fake_run(tmp_path / "rb", "method=relationbooth", "backbone=tiny_sdxl", "dataset=shapes_dreamrelation")
    expected: dict[str, list[str]] = {}
    for item in data:
        for entity, image in zip(item.entities, item.concept_images):
            expected.setdefault(entity, []).append(str(image))
    got = refs.dataset_references(run)
    assert got == expected and len(got) >= 4 and all(len(v) >= 1 for v in got.values())
    # RRNet layout: the object images of A and B
    rel = synthetic_data("shapes_rrnet")
    run = _fake_run(tmp_path / "rr", "method=rrnet", "backbone=tiny_sd21", "dataset=shapes_rrnet")
    got = refs.dataset_references(run)
    for r in rel:
        assert all(str(p) in got[r.A] for p in r.images["A"]) and all(str(p) in got[r.B] for p in r.images["B"])
    assert set(got) == {x for r in rel for x in (r.A, r.B)}
    # ReVersion layout: the exemplars, references of the whole image
    ex = synthetic_data("shapes_reversion")
    run = _fake_run(tmp_path / "rv", "method=reversion", "backbone=tiny_sd15", "dataset=shapes_reversion")
    assert refs.dataset_references(run) == {refs.WHOLE_IMAGE: [str(i.image) for i in ex.items]}


def test_prompt_entities_name_reference_entities_by_whole_words():
    from relgen.evaluate.samples import EvalPrompt

    table = {"circle": ["c.png"], "blue circle": ["bc.png"], "square": ["s.png"], refs.WHOLE_IMAGE: ["w.png"]}
    prompts = [EvalPrompt("p", "a blue circle on a square", "a blue circle on a square", "a blue circle", "square",
                          "on"),
               EvalPrompt("q", "circles on squares", "circles on squares", "circles", "squares", "on")]
    first, second = refs.attach_references(prompts, table)
    # the longest name held as whole words wins; "circles" does not name "circle"
    assert first.references == {"a blue circle": ["bc.png"], "square": ["s.png"], refs.WHOLE_IMAGE: ["w.png"]}
    assert second.references == {refs.WHOLE_IMAGE: ["w.png"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = evaluation_run(tmp_path_factory.mktemp("references"), PROMPTS)
    models = {"clip": tiny.write_tiny_clip(root / "clip", words=WORDS), "dino": tiny.write_tiny_vit(root / "dino")}
    return root, models


def _eval(models, **extra) -> dict:
    return {"device": "cpu", "clip": {"pretrained": str(models["clip"])}, "dino": {"pretrained": str(models["dino"])},
            **extra}


def test_clip_i_and_dino_default_to_the_runs_exemplars(setup):
    from transformers import AutoImageProcessor, AutoModel

    from relgen.data.readers import read_reversion_folder
    from relgen.data.registry import open_dataset
    from relgen.evaluate.config import ClipConfig
    from relgen.evaluate.images import open_rgb
    from relgen.evaluate.metrics.clip import clip_embedder

    root, models = setup
    out = evaluate(run_dir=str(root / "run"), prompts=str(root / "prompts.json"), num_images=2, include_base=False,
                   metrics=["clip_i", "dino"], eval=_eval(models), progress=False)
    res = json.loads((out / "results.json").read_text())
    cfg = OmegaConf.load(root / "run" / "config.yaml")
    exemplars = [open_rgb(i.image) for i in read_reversion_folder(open_dataset(cfg.dataset).root).items]
    assert len(exemplars) >= 2
    clip = clip_embedder(ClipConfig(pretrained=str(models["clip"])), torch.device("cpu")).images
    model, proc = AutoModel.from_pretrained(models["dino"]).eval(), AutoImageProcessor.from_pretrained(models["dino"])

    def dino(images):
        with torch.no_grad():
            return torch.nn.functional.normalize(model(**proc(images=images, return_tensors="pt"))
                                                 .last_hidden_state[:, 0], dim=-1)

    assert len(res["images"]) == 4
    for entry in res["images"]:
        image = open_rgb(entry["path"])
        for name, embed in (("clip_i", clip), ("dino", dino)):
            # DreamBooth's CLIP-I / DINO: 100 x the mean cosine with the references
            expected = 100 * float((embed(exemplars) @ embed([image])[0]).mean())
            assert entry["scores"][name]["values"][name] == pytest.approx(expected, abs=1e-4), name
    assert res["results"]["method"]["clip_i"]["clip_i"]["n"] == 4


def test_a_reference_folder_and_prompts_with_references_take_precedence(setup, tmp_path):
    from PIL import Image

    root, models = setup
    folder = tmp_path / "refs"
    (folder / "circle").mkdir(parents=True)
    for k, name in enumerate(("circle/0.png", "circle/1.png", "scene.png")):
        Image.fromarray(np.full((16, 16, 3), 60 * (k + 1), np.uint8)).save(folder / name)
    cfg = EvaluateConfig(run_dir=str(root / "run"), prompts=str(root / "prompts.json"), metrics=["clip_i"],
                         eval=EvalModelsConfig(references=str(folder)))
    first, second = plan(cfg).prompts
    circle = [str(folder / "circle" / "0.png"), str(folder / "circle" / "1.png")]
    assert first.references == {"red circle": circle, refs.WHOLE_IMAGE: [str(folder / "scene.png")]}
    assert second.references == {"red circle": circle, refs.WHOLE_IMAGE: [str(folder / "scene.png")]}
    # metrics that need no references leave the prompts as they are
    bare = plan(EvaluateConfig(run_dir=str(root / "run"), prompts=str(root / "prompts.json"), metrics=["clip_t"]))
    assert all(not p.references for p in bare.prompts)
    # a prompt file that gives references keeps them
    given = dict(PROMPTS, prompts=[dict(PROMPTS["prompts"][0], references={"blue square": ["refs/scene.png"]})])
    (tmp_path / "given.json").write_text(json.dumps(given))
    [prompt] = plan(EvaluateConfig(run_dir=str(root / "run"), prompts=str(tmp_path / "given.json"),
                                   metrics=["dino"])).prompts
    assert prompt.references == {"blue square": [str(folder / "scene.png")]}


def test_a_missing_dataset_folder_fails_with_one_line_naming_the_run_and_the_key(setup, tmp_path):
    root, models = setup
    run = tmp_path / "moved"
    shutil.copytree(root / "run", run, ignore=shutil.ignore_patterns("eval", "checkpoints"))
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.dataset.root = str(tmp_path / "gone")
    OmegaConf.save(cfg, run / "config.yaml")
    with pytest.raises(DataError) as info:
        plan(EvaluateConfig(run_dir=str(run), prompts=str(root / "prompts.json"), metrics=["clip_t", "clip_i"]))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"run_dir={run}: the prompts carry no reference images for clip_i;")
    assert f"dataset folder {tmp_path / 'gone'}" in message
    assert message.endswith("give eval.references=<folder of images>")
    # a synthetic dataset that was written to another cache folder
    unwritten = _fake_run(tmp_path / "other", "backbone=tiny_sd15", "dataset=shapes_reversion", "dataset.seed=987")
    shutil.copytree(root / "run" / "export", unwritten / "export")
    with pytest.raises(DataError, match=r"other: the prompts carry no reference images for dino; its dataset folder "
                                        r".*shapes_reversion-\w+ \(dataset shapes_reversion\) is missing"):
        plan(EvaluateConfig(run_dir=str(unwritten), prompts=str(root / "prompts.json"), metrics=["dino"]))
    with pytest.raises(DataError, match="eval.references=.*not a folder"):
        plan(EvaluateConfig(run_dir=str(run), prompts=str(root / "prompts.json"), metrics=["dino"],
                            eval=EvalModelsConfig(references=str(tmp_path / "none"))))
