"""RelationBooth end to end: a run per tiny backbone, resume, generation with two references,
the paper preset's composition, and bad data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import grid_cells, local_weights
from relgen.errors import DataError
from relgen.run import run_training
from relgen.testing import compose, run_relgen as _run_relgen

CAL = "method.cal_max_side_fraction=0.5"  # selects the tiny UNets' 4 x 4 layers


def run_relgen(*args: str, **kwargs):
    # the tiny models gain nothing from a second thread on a busy 2-core machine
    return _run_relgen(*args, env={"OMP_NUM_THREADS": "1"}, **kwargs)


def _train(run_dir: Path, *overrides: str) -> Path:
    cfg = compose("experiment=relationbooth_tiny", "trainer=debug", CAL, *overrides)
    assert run_training(cfg, str(run_dir)) == 0
    return run_dir


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("rb") / "tiny_sdxl", "backbone=tiny_sdxl", "method.sample_steps=2")


@pytest.fixture(scope="module")
def shapes_root() -> Path:
    from relgen.data.registry import open_dataset

    handle = open_dataset(compose("method=relationbooth", "dataset=shapes_dreamrelation").dataset)
    handle.load()
    return handle.root


def _check_run(run: Path, backbone: str) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["method"], summary["backbone"], summary["steps"]) == ("relationbooth", backbone, 2)
    export = run / "export"
    assert {"relationbooth-above-lora.safetensors", "relationbooth-above-image-branch.safetensors", "image_branch.json",
            "image_encoder", "relgen.json"} <= {p.name for p in export.iterdir()}
    rows = _rows(run)
    assert [r["step"] for r in rows] == ["1", "2"]
    assert {"loss", "diff", "kml", "cal", "grad_norm"} <= set(rows[0])
    first = json.loads((export / "image_branch.json").read_text())["samples"][0]
    assert grid_cells(run / "samples" / "final.png") == (1, 1)  # the first item, one image
    assert len(first["images"]) == len(first["phrases"]) == len(first["boxes"]) == 2


def test_short_run_tiny_sdxl(sdxl_run):
    _check_run(sdxl_run, "tiny_sdxl")
    spec = json.loads((sdxl_run / "export" / "image_branch.json").read_text())["branch"]
    assert spec["resampler"]["output_dim"] == 64 and spec["text_tokens"] == 77


@pytest.mark.parametrize("backbone", ["tiny_sd15", "tiny_sd21"])
def test_short_run_per_backbone(tmp_path, backbone):
    _check_run(_train(tmp_path / backbone, f"backbone={backbone}", "method.sample_steps=2"), backbone)


def test_resume_is_bitwise(tmp_path):
    off = ("trainer.sample_at_end=false", "backbone=tiny_sd15")
    straight = _train(tmp_path / "straight", *off, "trainer.max_steps=4")
    from safetensors import safe_open

    def lora(run):  # tensors and metadata (the file's metadata map has no fixed key order)
        with safe_open(str(run / "export" / "relationbooth-above-lora.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()

    half = _train(tmp_path / "half", *off, "trainer.max_steps=2")
    after_two, _ = lora(half)
    _train(half, *off, "trainer.max_steps=4", "resume=latest")
    (a, meta_a), (b, meta_b) = lora(half), lora(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and meta_a == meta_b
    assert not all(torch.equal(a[k], after_two[k]) for k in a)
    assert _rows(half) == _rows(straight)


def test_generate_with_two_references(sdxl_run, shapes_root, tmp_path):
    refs = shapes_root / "videos" / "1"
    out = tmp_path / "gen"
    proc = run_relgen(f"run_dir={sdxl_run}", "prompt=a cat is hugging a dog", "num_images=1",
                      "steps=2", f"method_options.images=[{refs / 'concept0.png'},{refs / 'concept1.png'}]",
                      "method_options.phrases=[cat,dog]", "method_options.boxes=[[0,0.1,0.6,0.9],[0.4,0.1,1,0.9]]",
                      f"out_dir={out}", module="relgen.generate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = Image.open(out / "a_cat_is_hugging_a_dog" / "0000.png")
    assert image.size == (64, 64) and np.asarray(image).std() > 0


def test_paper_preset_composes_and_dry_runs(shapes_root, capsys, tmp_path):
    cfg = compose("experiment=relationbooth_paper", f"dataset.root={shapes_root}", "dry_run=true")
    assert (cfg.backbone.name, cfg.backbone.resolution, cfg.dataset.name) == ("sdxl", 1024, "dreamrelation_folder")
    m = cfg.method
    assert (m.kp_weight, m.kp_max_timestep, m.local_tokens_train, m.local_tokens_inference) == (1e-3, None, True, True)
    assert (m.rank, m.lora_alpha, m.scale, m.resampler_dim, m.resampler_heads, m.local_image_size) == (
        4, 4.0, 0.6, 1280, 20, 896)
    assert m.image_encoder == "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
    assert (m.cal_layer_rule, m.cal_max_queries) == ("absolute", 1024)
    from relgen.errors import ConfigError

    with pytest.raises(ConfigError, match="'laion/CLIP-ViT-bigG-14-laion2B-39B-b160k' is not in the Hugging Face cache"):
        run_training(cfg, "/nonexistent-run-dir")  # neither encoder nor SDXL is here: said before anything loads
    encoder = tmp_path / "encoder"  # a dry run reads no weights, only that the folder is a model folder
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    cfg = compose("experiment=relationbooth_paper", f"dataset.root={shapes_root}", "dry_run=true",
                  f"backbone.pretrained={local_weights('tiny_sdxl')}", f"method.image_encoder={encoder}")
    assert run_training(cfg, "/nonexistent-run-dir") == 0
    assert "dry run ok: method=relationbooth backbone=sdxl" in capsys.readouterr().out


def _broken_copy(shapes_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(shapes_root, root)
    return root


def test_item_without_predicate_fails_the_cli_dry_run_only_with_calibration_on(shapes_root, tmp_path):
    root = _broken_copy(shapes_root, tmp_path)
    prompts = json.loads((root / "prompts.json").read_text())
    del prompts["2"]["predicate"]
    (root / "prompts.json").write_text(json.dumps(prompts))
    proc = run_relgen("method=relationbooth", "dataset=dreamrelation_folder", f"dataset.root={root}", "dry_run=true",
                      "method.calibration=true", f"hydra.run.dir={tmp_path / 'run'}")
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("relgen: error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "prompts.json: item '2' has no 'predicate' but method.calibration=true" in lines[0]


@pytest.mark.parametrize("breakage, message", [
    ("predicate", r"item '0': predicate \['beneath'\] does not appear"),
    ("keypoints", r"motion_keyposes\.pth: keypoints have shape \(1, 17, 2\), expected \(2, 17, 2\)"),
    ("mask", r"masks/0/motion1\.png: mask is empty"),
])
def test_bad_data_is_named_before_loading_weights(shapes_root, tmp_path, breakage, message):
    root = _broken_copy(shapes_root, tmp_path)
    if breakage == "predicate":
        prompts = json.loads((root / "prompts.json").read_text())
        prompts["0"]["predicate"] = ["beneath"]
        (root / "prompts.json").write_text(json.dumps(prompts))
    elif breakage == "keypoints":
        torch.save(torch.rand(1, 17, 2), root / "videos" / "0" / "motion_keyposes.pth")
    else:
        Image.new("L", (64, 64)).save(root / "masks" / "0" / "motion1.png")
    cfg = compose("method=relationbooth", "dataset=dreamrelation_folder", f"dataset.root={root}", "dry_run=true")
    with pytest.raises(DataError, match=message):
        run_training(cfg, str(tmp_path / "run"))
