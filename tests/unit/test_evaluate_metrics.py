"""The evaluation metrics on tiny random-weight models, against hand computation.

Every model is built in-process, written with ``save_pretrained`` and loaded by the metric
through the same ``from_pretrained`` path as the real weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from relgen.errors import ConfigError, DataError
from relgen.evaluate import config as ec
from relgen.evaluate import tiny
from relgen.evaluate.metrics import build_metric, get_metric
from relgen.evaluate.metrics import clip as clip_mod
from relgen.evaluate.metrics import detector as det
from relgen.evaluate.metrics import vlm
from relgen.evaluate.samples import EvalPrompt, Sample

CAT_BOX = EvalPrompt(id="cat-on-box", text="cat <R> box", readable="a cat on top of a box", a="cat", b="box",
                     predicate="on top of", swapped="a box on top of a cat")
DOG_BOWL = EvalPrompt(id="dog-in-bowl", text="dog <R> bowl", readable="a dog inside a bowl", a="dog", b="bowl",
                      predicate="inside")


def _images(n: int, seed: int = 0, size: int = 48):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-models")
    words = tiny.prompt_words([CAT_BOX, DOG_BOWL])
    return {"clip": tiny.write_tiny_clip(root / "clip", words=words),
            "dino": tiny.write_tiny_vit(root / "dino", kind="dino"),
            "dinov2": tiny.write_tiny_vit(root / "dinov2", kind="dinov2"),
            "owl": tiny.write_tiny_owlv2(root / "owl", words=words),
            "llava": tiny.write_tiny_llava(root / "llava", words=words)}


def _eval(models, **nodes) -> ec.EvalModelsConfig:
    cfg = ec.EvalModelsConfig(device="cpu", clip=ec.ClipConfig(pretrained=str(models["clip"])),
                              dino=ec.DinoConfig(pretrained=str(models["dino"])),
                              detector=ec.DetectorConfig(pretrained=str(models["owl"])),
                              judge=ec.JudgeConfig(pretrained=str(models["llava"]), dtype="float32", max_new_tokens=6))
    for key, node in nodes.items():
        setattr(cfg, key, node)
    return cfg


# ------------------------------------------------------------------------------ CLIP


def test_scaled_cosine_of_known_embeddings():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.6, 0.8], [-1.0, 0.0], [0.0, 1.0]])
    assert clip_mod.scaled_cosine(u, v, 100.0, True).tolist() == pytest.approx([60.0, 0.0, 100.0])
    assert clip_mod.scaled_cosine(u, v, 100.0, False).tolist() == pytest.approx([60.0, -100.0, 100.0])
    assert clip_mod.scaled_cosine(u, v, 2.5, True).tolist() == pytest.approx([1.5, 0.0, 2.5])  # CLIPScore's w


def _direct_clip(folder, images, texts):
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        img = model.get_image_features(**proc(images=images, return_tensors="pt")).pooler_output
        tok = proc.tokenizer(texts, padding=True, return_tensors="pt")
        txt = model.get_text_features(**tok).pooler_output
    return torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)


def test_clip_t_and_clip_r_equal_the_scaled_cosine_of_the_models_embeddings(models):
    images = _images(4)
    samples = [Sample(CAT_BOX if i % 2 == 0 else DOG_BOWL, i, "method", im) for i, im in enumerate(images)]
    cfg = _eval(models, clip=ec.ClipConfig(pretrained=str(models["clip"]), clamp_negative=False))
    t = build_metric("clip_t", cfg).score(samples)
    r = build_metric("clip_r", cfg).score(samples)
    img, txt = _direct_clip(models["clip"], images, [s.prompt.readable for s in samples])
    _, pred = _direct_clip(models["clip"], images[:1], [s.prompt.predicate for s in samples])
    _, ent_a = _direct_clip(models["clip"], images[:1], [f"a photo of a {s.prompt.a}" for s in samples])
    _, ent_b = _direct_clip(models["clip"], images[:1], [f"a photo of a {s.prompt.b}" for s in samples])
    for i in range(4):
        assert t[i].values["clip_t"] == pytest.approx(100 * float(img[i] @ txt[i]), abs=1e-4)
        entity = 50 * float(img[i] @ ent_a[i] + img[i] @ ent_b[i])
        assert t[i].values["clip_entity"] == pytest.approx(entity, abs=1e-4)
        assert r[i].values["clip_r"] == pytest.approx(100 * float(img[i] @ pred[i]), abs=1e-4)
        # two predicates in the set: top-1 is whether the own predicate has the larger cosine
        others = {"on top of": pred[1], "inside": pred[0]}[samples[i].prompt.predicate]
        assert r[i].values["clip_r_top1"] == float(float(img[i] @ pred[i]) > float(img[i] @ others))
    clamped = build_metric("clip_t", _eval(models)).score(samples)
    for i in range(4):
        assert clamped[i].values["clip_t"] == pytest.approx(max(0.0, 100 * float(img[i] @ txt[i])), abs=1e-4)


def test_clip_i_and_dino_average_over_entities_and_crop_to_reference_boxes(models, tmp_path):
    refs = _images(3, seed=7, size=40)
    paths = []
    for i, im in enumerate(refs):
        paths.append(str(tmp_path / f"ref{i}.png"))
        im.save(paths[-1])
    box = (4.0, 8.0, 30.0, 36.0)
    prompt = EvalPrompt(id="p", text="cat <R> box", readable="cat on top of box", a="cat", b="box",
                        predicate="on top of", references={"cat": paths[:2], "box": [paths[2]]},
                        reference_boxes={"cat": [None, box], "box": [None]})
    bare = EvalPrompt(id="q", text="x", readable="cat on top of box", a="cat", b="box", predicate="on top of")
    image = _images(1, seed=3)[0]
    samples = [Sample(prompt, 0, "method", image), Sample(bare, 0, "method", image)]
    cfg = _eval(models)
    for name, key in (("clip_i", "clip"), ("dino", "dino")):
        got = build_metric(name, cfg).score(samples)
        if name == "clip_i":
            embed = clip_mod.clip_embedder(cfg.clip, torch.device("cpu")).images
        else:
            from transformers import AutoImageProcessor, AutoModel

            model, proc = AutoModel.from_pretrained(models["dino"]).eval(), AutoImageProcessor.from_pretrained(models["dino"])

            def embed(ims):
                with torch.no_grad():
                    cls = model(**proc(images=ims, return_tensors="pt")).last_hidden_state[:, 0]
                return torch.nn.functional.normalize(cls, dim=-1)
        g = embed([image])[0]
        cat = embed([refs[0], refs[1].crop((4, 8, 30, 36))])
        boxref = embed([refs[2]])
        expected = 0.5 * (100 * float((cat @ g).mean()) + 100 * float(boxref[0] @ g))
        assert got[0].values[name] == pytest.approx(expected, abs=1e-4), name
        assert got[1].values[name] is None  # no references: not applicable


# ------------------------------------------------------------------------------ detector rule

H = 100.0


@pytest.mark.parametrize("a, b, geometry", [
    ((40, 5, 60, 25), (40, 60, 60, 80), "above"),        # vertical gap 35 > 5 % of 100
    ((40, 60, 60, 80), (40, 5, 60, 25), "below"),
    ((5, 40, 25, 60), (60, 40, 80, 60), "left_of"),
    ((60, 40, 80, 60), (5, 40, 25, 60), "right_of"),
    ((40, 20, 60, 40), (30, 43, 70, 80), "on_top_of"),   # gap 3 <= 5
    ((40, 20, 60, 45), (30, 40, 70, 80), "on_top_of"),   # overlapping bottom edge
    ((0, 10, 20, 40), (22, 42, 40, 82), "above"),        # gap 2 but no shared columns
    ((40, 40, 50, 50), (20, 20, 80, 80), "inside"),
    ((20, 20, 80, 80), (40, 40, 50, 50), "contains"),
    ((10, 10, 30, 30), (50, 50, 70, 70), "ambiguous"),   # tie: |dx| == |dy|
    ((10, 40, 30, 60), (50, 0, 70, 20), "ambiguous"),    # tie on the other diagonal
    ((0, 0, 60, 60), (30, 30, 90, 90), "ambiguous"),     # overlap below the inside fraction, diagonal
])
def test_box_rule(a, b, geometry):
    assert det.box_geometry(a, b, H) == geometry


@pytest.mark.parametrize("relation, geometry, ok", [
    ("above", "above", True), ("above", "on_top_of", True), ("above", "below", False),
    ("below", "below", True), ("below", "above", False), ("left_of", "left_of", True),
    ("left_of", "right_of", False), ("right_of", "right_of", True), ("on_top_of", "on_top_of", True),
    ("on_top_of", "above", False), ("inside", "inside", True), ("inside", "contains", False),
    ("next_to", "left_of", True), ("next_to", "right_of", True), ("next_to", "above", False),
    ("left_of", "ambiguous", False), ("next_to", "ambiguous", False),
])
def test_prompted_relations_and_their_geometries(relation, geometry, ok):
    assert (geometry in det.SATISFIES[relation]) is ok


def test_missing_objects_and_undecidable_predicates():
    words = ec.DETECTOR_RELATION_WORDS
    assert det.relation_key("to the left of", "to_the_left_of", words) == "left_of"
    assert det.relation_key("On  top of", "x", words) == "on_top_of"
    assert det.relation_key("beside", "beside", words) == "next_to"
    assert det.relation_key("painted on", "painted_on", words) is None
    box = (40, 5, 60, 25)
    assert det.judge_boxes(None, box, "above", H, 0.8, 0.05) == (
        {"object_accuracy": 0.0, "relation_accuracy": 0.0}, "A missing")
    assert det.judge_boxes(box, None, "above", H, 0.8, 0.05)[1] == "B missing"
    assert det.judge_boxes(None, None, "above", H, 0.8, 0.05)[1] == "A and B missing"
    assert det.judge_boxes(None, box, None, H, 0.8, 0.05)[0] == {"object_accuracy": 0.0, "relation_accuracy": None}
    assert det.judge_boxes(box, (40, 60, 60, 80), None, H, 0.8, 0.05) == (
        {"object_accuracy": 1.0, "relation_accuracy": None}, "above")
    assert det.judge_boxes(box, (40, 60, 60, 80), "above", H, 0.8, 0.05)[0]["relation_accuracy"] == 1.0
    assert det.judge_boxes(box, (40, 60, 60, 80), "below", H, 0.8, 0.05)[0]["relation_accuracy"] == 0.0


def test_detector_metric_end_to_end_on_tiny_owlv2(models):
    samples = [Sample(CAT_BOX, i, "method", im) for i, im in enumerate(_images(3))]
    low = build_metric("detector_relation", _eval(models, detector=ec.DetectorConfig(pretrained=str(models["owl"]),
                                                                                   threshold=0.0)))
    for s, sc in zip(samples, low.score(samples)):
        # everything scores above 0: both found, and the verdict is the rule applied to the drawn boxes
        a, b = sc.details["detections"]["a"], sc.details["detections"]["b"]
        assert sc.values["object_accuracy"] == 1.0 and len(sc.boxes) == 2
        geometry = det.box_geometry(tuple(a["box"]), tuple(b["box"]), s.image.size[1])
        assert sc.verdict == geometry
        assert sc.values["relation_accuracy"] == float(geometry in det.SATISFIES["on_top_of"])
        assert all(0 <= x <= 48 + 1e-3 for x in a["box"] + b["box"])
    high = build_metric("detector_relation", _eval(models, detector=ec.DetectorConfig(pretrained=str(models["owl"]),
                                                                                    threshold=1.01)))
    for sc in high.score(samples):
        assert sc.values == {"object_accuracy": 0.0, "relation_accuracy": 0.0} and sc.verdict == "A and B missing"


# ------------------------------------------------------------------------------ VLM judge


@pytest.mark.parametrize("answer, parsed", [
    ("Yes", True), ("Yes, there is a cat in the image.", True), ("yes.", True), ("Yeah, I can see one.", True),
    ("There is a cat sitting on a box.", True), ("The image shows a cat.", True),
    ("Both the cat and the box are present.", True), ("Certainly! A cat is visible.", True),
    ("No", False), ("No, there isn't.", False), ("There is no cat in the image.", False),
    ("I cannot see any cat.", False), ("The cat is not present in the image.", False),
    ("Neither is present.", False), ("Nope", False), ("Only the box; the cat is missing.", False),
    ("", None), ("asdf qwerty", None), ("A cat.", None), ("12345", None),
])
def test_yes_no_parser(answer, parsed):
    assert vlm.parse_yes_no(answer) is parsed


OPTIONS = [("a cat on top of a box", "cat", "box"), ("a box on top of a cat", "box", "cat")]


@pytest.mark.parametrize("answer, choice", [
    ("A cat on top of a box.", "first"),
    ("There is a box on top of a cat.", "second"),
    ("The image shows the cat on top of the box.", "first"),
    ("It is a cat on top of a box, not a box on top of a cat.", "first"),
    ("Rather than a cat on top of a box, it is a box on top of a cat", "second"),
    ("The first one.", "first"), ("The latter.", "second"),
    ("The cat is sitting on the box.", "first"),           # entity order
    ("A box lies on a cat", "second"),
    ("Neither.", "neither"), ("None of them.", "neither"),
    ("neither, the cat is beside the box", "neither"),
    ("I see neither of these.", "neither"),
    ("a cat on top of a box or a box on top of a cat", None),   # echoes both: ambiguous
    ("Purple.", None), ("", None), ("zxcv", None),
])
def test_choice_parser(answer, choice):
    assert vlm.parse_choice(answer, OPTIONS) == choice


def test_judge_outcomes_for_both_prompts_of_a_pair():
    ab = CAT_BOX
    ba = EvalPrompt(id="box-on-cat", text="box <R> cat", readable="a box on top of a cat", a="box", b="cat",
                    predicate="on top of", swapped="a cat on top of a box", order=1)
    assert ab.pair == ba.pair == ("a cat on top of a box", "a box on top of a cat")
    assert vlm.questions_for(ba, ec.RRNET_QUESTIONS) == [
        "Is there any box in the image?", "Is there any cat in the image?",
        "Are both box and cat present in the image?",
        "Can you infer the relationship that exists between box and cat in the image?",
        "Is there a cat on top of a box or a box on top of a cat or neither?"]
    yes3 = ["Yes.", "Yes, there is.", "Yes, both are present.", "Yes."]
    s = vlm.judge_answers(ab, yes3 + ["A cat on top of a box."])
    assert s.values == {"object_accuracy": 1.0, "relation_accuracy": 1.0, "relation_and_objects": 1.0,
                        "unparsed_rate": 0.0}
    s = vlm.judge_answers(ba, yes3 + ["A cat on top of a box."])  # names the other prompt
    assert s.values["relation_accuracy"] == 0.0 and s.values["object_accuracy"] == 1.0
    s = vlm.judge_answers(ba, yes3 + ["The box is on the cat."])
    assert s.values["relation_accuracy"] == 1.0
    # question 3 catches merged objects: yes, yes, then no
    s = vlm.judge_answers(ab, ["Yes", "Yes", "No, only one object is visible.", "No", "Neither."])
    assert s.values == {"object_accuracy": 0.0, "relation_accuracy": 0.0, "relation_and_objects": 0.0,
                        "unparsed_rate": 0.0}
    # garbage is counted, and fails
    s = vlm.judge_answers(ab, ["Purple", "Yes", "Yes", "Hmm", "Banana"])
    assert s.unparsed == 2 and s.values["unparsed_rate"] == 1.0 and s.values["object_accuracy"] == 0.0
    assert s.values["relation_accuracy"] == 0.0


def test_tiny_llava_judge_asks_the_five_questions_in_one_conversation(models, monkeypatch):
    seen: list[list[list[dict]]] = []
    real = vlm.VisionLanguageJudge.generate

    def recording(self, images, conversations):
        seen.append([list(c) for c in conversations])
        return real(self, images, conversations)

    monkeypatch.setattr(vlm.VisionLanguageJudge, "generate", recording)
    samples = [Sample(CAT_BOX, i, "method", im) for i, im in enumerate(_images(3))]
    cfg = _eval(models)
    cfg.judge.batch_size = 2
    scores = build_metric("vlm_relation", cfg).score(samples)
    assert len(seen) == 5 * 2  # 5 turns x 2 batches (2 + 1 images)
    last = seen[-2][0]  # image 0's conversation at question 5
    assert [m["role"] for m in last] == ["user", "assistant"] * 4 + ["user"]
    assert last[0]["content"][0] == {"type": "image"}
    assert [m["content"][-1]["text"] for m in last[0::2]] == vlm.questions_for(CAT_BOX, ec.RRNET_QUESTIONS)
    for s, sc in zip(samples, scores):
        assert len(sc.details["answers"]) == 5
        assert sc.values == vlm.judge_answers(s.prompt, sc.details["answers"]).values


# ------------------------------------------------------------------------------ FID


class ChannelStats(torch.nn.Module):
    """uint8 [N, 3, H, W] -> per-channel mean and the mean of squares (6 features)."""

    num_features = 6

    def forward(self, x):
        x = x.double() / 255.0
        return torch.cat([x.mean(dim=(2, 3)), (x ** 2).mean(dim=(2, 3))], dim=1)


def _frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_is_zero_for_identical_sets_and_matches_the_closed_form(tmp_path):
    from relgen.evaluate.metrics.fid import Fid, to_uint8_batch

    refs = _images(12, seed=1, size=32)
    ref_dir = tmp_path / "refs"
    ref_dir.mkdir()
    for i, im in enumerate(refs):
        im.save(ref_dir / f"{i:02d}.png")
    cfg = ec.FidConfig(reference_dir=str(ref_dir), batch_size=5)
    metric = Fid(cfg, torch.device("cpu"), feature=ChannelStats())
    p = CAT_BOX
    same = metric.score_set([Sample(p, i, "m", im) for i, im in enumerate(refs)])
    assert same["fid"] == pytest.approx(0.0, abs=1e-8) and same["n_reference"] == 12
    other = [im.point(lambda v: min(255, int(v * 0.5 + 100))) for im in _images(10, seed=2, size=32)]
    got = metric.score_set([Sample(p, i, "m", im) for i, im in enumerate(other)])
    fr = ChannelStats()(to_uint8_batch(refs)).numpy()
    fg = ChannelStats()(to_uint8_batch(other)).numpy()
    assert got["fid"] == pytest.approx(_frechet(fr, fg), rel=1e-6)
    assert got["fid"] > 0.01


def test_fid_dino_features_and_bad_inputs(models, tmp_path):
    from relgen.evaluate.metrics.fid import Fid

    refs = _images(4, seed=1, size=32)
    for i, im in enumerate(refs):
        im.save(tmp_path / f"{i}.png")
    cfg = ec.FidConfig(features="dino", pretrained=str(models["dinov2"]), reference_dir=str(tmp_path))
    metric = Fid(cfg, torch.device("cpu"))
    assert metric.score_set([Sample(CAT_BOX, i, "m", im) for i, im in enumerate(refs)])["fid"] == pytest.approx(0, abs=1e-6)
    assert metric.score_set([Sample(CAT_BOX, i, "m", im) for i, im in enumerate(_images(4, 9))])["fid"] > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="eval.fid.reference_dir=.*no images"):
        Fid(ec.FidConfig(reference_dir=str(empty)), feature=ChannelStats()).score_set(
            [Sample(CAT_BOX, i, "m", im) for i, im in enumerate(refs)])
    with pytest.raises(ConfigError, match="eval.fid.inception_weights"):
        Fid(ec.FidConfig(reference_dir=str(tmp_path))).score_set([Sample(CAT_BOX, i, "m", im) for i, im in enumerate(refs)])
    with pytest.raises(ConfigError, match="eval.fid.reference_dir="):
        Fid(ec.FidConfig(), feature=ChannelStats()).score_set([Sample(CAT_BOX, i, "m", im) for i, im in enumerate(refs)])


# ------------------------------------------------------------------------------ relworld


def test_relworld_metric_gives_the_detectors_verdicts():
    from relgen.evaluate.report import direction_flags
    from relgen.relworld.metric import relworld_prompt
    from relgen.relworld import world as rw
    from relgen.relworld.detector import Detector
    from PIL import Image

    spec = rw.WorldSpec()
    detector = Detector(spec)
    samples, expected = [], []
    rng = np.random.default_rng(0)
    for i, relation in enumerate(spec.relations * 2):
        scene = rw.sample_scene(np.random.default_rng([3, i]), spec, relation)
        (a, b) = [(o.shape, o.colour) for o in scene.objects]
        image, _ = scene.render()
        if i % 3 == 1:  # degrade: noise, so some verdicts fail
            image = np.clip(image.astype(int) + rng.integers(-90, 90, image.shape), 0, 255).astype(np.uint8)
        for order, (x, y) in enumerate(((a, b), (b, a))):
            prompt = relworld_prompt(a, relation, b, order=0, spec=spec, pair_index=i)
            if order == 1:  # the swapped prompt scored on the same image: the relation is wrong way round
                prompt = EvalPrompt(id=f"sw{i}", text=rw.prompt(b, relation, a, spec), readable=rw.prompt(b, relation, a, spec),
                                    a=rw.object_name(b), b=rw.object_name(a), predicate=spec.phrases[relation][0],
                                    relation=relation, swapped=rw.prompt(a, relation, b, spec), order=1,
                                    objects={"a": list(b), "b": list(a)})
            samples.append(Sample(prompt, 0, "m", Image.fromarray(image)))
            expected.append(detector.read(image, x, relation, y))
    scores = build_metric("relworld").score(samples)
    assert [s.values["relation_accuracy"] for s in scores] == [float(r.relation_ok) for r in expected]
    assert [s.values["object_accuracy"] for s in scores] == [float(r.both_present) for r in expected]
    assert 0 < sum(r.relation_ok for r in expected) < len(expected)  # the set has both outcomes
    flags, clusters = direction_flags(samples, scores)
    both = {}
    for k in range(len(samples) // 2):  # samples 2k and 2k+1 are the two prompts of one pair
        ok = scores[2 * k].values["relation_accuracy"] == 1.0 and scores[2 * k + 1].values["relation_accuracy"] == 1.0
        both[samples[2 * k].prompt.pair[0]] = ok
    assert len(flags) == len(both) and dict(zip(clusters, flags)) == both
    with pytest.raises(DataError, match="objects"):
        build_metric("relworld").score([Sample(CAT_BOX, 0, "m", _images(1)[0])])


# ------------------------------------------------------------------------------ loading


def test_missing_weights_and_unknown_metrics_fail_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"eval.clip.pretrained='.*nowhere'.*set eval.clip.pretrained="):
        build_metric("clip_t", ec.EvalModelsConfig(device="cpu", clip=ec.ClipConfig(pretrained=str(tmp_path / "nowhere")))
                     ).score([Sample(CAT_BOX, 0, "m", _images(1)[0])])
    with pytest.raises(ConfigError, match="unknown metric 'clip_x'.*clip_t"):
        get_metric("clip_x")
    with pytest.raises(DataError, match="'painted on' are not in"):
        EvalPrompt(id="x", text="cat <R> stone", readable="cat on stone", a="cat", b="stone", predicate="painted on")
