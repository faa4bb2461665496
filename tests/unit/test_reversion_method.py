"""The reversion method: steering loss wiring, trained rows, import/export, prompt handling."""

import re
import warnings

import pytest
import torch

from relgen.errors import ConfigError, RelgenError
from relgen.plugin import StepContext
from relgen.methods.reversion.losses import steering_loss
from relgen.methods.reversion.words import excluded_token_ids
from relgen.testing import compose
from relgen.train.timesteps import make_timestep_sampler

SAMPLE_NORM = 2.0933  # L2 norm of the published painted_on <R> vector


def make_method(backbone: str = "tiny_sd15", *overrides: str):
    """A fresh ReVersion on a fresh tiny backbone and the synthetic dataset."""
    from relgen.backbones.loading import load_backbone
    from relgen.data.registry import open_dataset
    from relgen.methods.reversion.method import ReVersion

    cfg = compose("method=reversion", f"backbone={backbone}", "dataset=shapes_reversion", *overrides)
    bb = load_backbone(cfg.backbone)
    data = open_dataset(cfg.dataset).load()
    return ReVersion(cfg.method, bb, data)


def ctx_for(method, seed: int = 0) -> StepContext:
    sampler = make_timestep_sampler(method.cfg.timestep_sampler, 1000, method.cfg.focal_alpha)
    return StepContext(torch.Generator().manual_seed(seed), sampler)


def embedding_matrices(method) -> list[torch.Tensor]:
    return [s.encoder.get_input_embeddings().weight.detach().clone() for s in method.backbone.slots]


def hand_batch():
    # negatives: red circle blue square | circle square ("a" is a stop word, <R> is excluded)
    return {"index": torch.tensor([0, 1]),
            "captions": ["a red circle <R> a blue square", "circle <R> square"],
            "positives": ["on under above atop", "in beside by near"]}


# ------------------------------------------------------------------------------------------
# config


def test_recipe_defaults_and_paper_experiment():
    from relgen.train.loop import effective_lr

    cfg = compose("method=reversion")
    m = cfg.method
    # the bare run: the shipped relworld model on relworld exemplars of one relation
    assert (cfg.backbone.name, cfg.dataset.name) == ("relworld", "relworld_reversion")
    assert (m.placeholder_token, m.initializer_token) == ("<R>", "and")
    assert (m.batch_size, m.grad_accum, m.max_steps, m.checkpoint_every) == (2, 4, 3000, 500)
    assert (m.lr, m.scale_lr, m.lr_scheduler, m.lr_warmup_steps) == (2.5e-4, True, "constant", 0)
    assert (m.timestep_sampler, m.focal_alpha) == ("relation_focal", 0.5)
    assert (m.denoise_loss_weight, m.steer_loss_weight, m.num_positives, m.temperature) == (1.0, 0.01, 4, 0.07)
    assert m.lowercase_prompts is True
    assert effective_lr(m, 1) == pytest.approx(2e-3)  # 2.5e-4 x 4 x 2 x 1 process
    assert effective_lr(m, 2) == pytest.approx(4e-3)
    paper = compose("experiment=reversion_paper", "dataset.root=/data/painted_on")
    assert (paper.backbone.name, paper.dataset.name, paper.method.name, paper.seed) == (
        "sd15", "reversion_folder", "reversion", 2023)
    assert (paper.backbone.inference_scheduler, paper.backbone.inference_steps, paper.backbone.guidance_scale) == (
        "pndm", 50, 7.5)
    assert compose("method=reversion", "backbone=tiny_sdxl").backbone.name == "tiny_sdxl"


# ------------------------------------------------------------------------------------------
# losses


@pytest.mark.parametrize("backbone", ["tiny_sd15", "tiny_sdxl"])
def test_total_loss_is_weighted_sum_of_denoise_and_hand_computed_steer(backbone):
    method = make_method(backbone, "method.denoise_loss_weight=0.5", "method.steer_loss_weight=0.3")
    batch = hand_batch()
    ctx = ctx_for(method, seed=7)
    state = ctx.generator.get_state()
    out = method.training_step(batch, ctx)

    again = ctx_for(method)
    again.generator.set_state(state)
    with torch.no_grad():
        denoise, _ = method.denoising_loss(batch, again)

    per_encoder = []
    for slot, rows in zip(method.backbone.slots, method.embeds.rows):
        tok = slot.tokenizer
        weight = slot.encoder.get_input_embeddings().weight
        neg_words = ["red", "circle", "blue", "square", "circle", "square"]
        neg_ids = tok.convert_tokens_to_ids([w + "</w>" for w in neg_words])
        pos_ids = [i for s in batch["positives"] for i in tok(s, add_special_tokens=False).input_ids]
        assert len(pos_ids) == 9  # "atop" is two pieces in the tiny vocabulary
        per_encoder.append(steering_loss(rows[0], weight[pos_ids], weight[neg_ids], 0.07))
    steer = sum(per_encoder) / len(per_encoder)

    assert out.logs["loss_denoise"] == pytest.approx(denoise.item(), rel=1e-6)
    assert out.logs["loss_steer"] == pytest.approx(steer.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * denoise.item() + 0.3 * steer.item(), rel=1e-6)
    assert steer.item() > 0


def test_steering_loss_value_by_formula():
    """Eq. 5 written out: -log(sum_pos exp(cos/t) / sum_all exp(cos/t)) on the gathered rows."""
    method = make_method("tiny_sd15")
    batch = hand_batch()
    ids = method.backbone.tokenize(batch["captions"])
    loss = method.steering_loss(batch, ids)
    tok = method.backbone.slots[0].tokenizer
    weight = method.backbone.slots[0].encoder.get_input_embeddings().weight.detach()
    anchor = method.embeds.rows[0][0].detach()
    neg = weight[tok.convert_tokens_to_ids(["red</w>", "circle</w>", "blue</w>", "square</w>",
                                            "circle</w>", "square</w>"])]
    pos = weight[[i for s in batch["positives"] for i in tok(s, add_special_tokens=False).input_ids]]
    cos = lambda rows: (rows @ anchor) / (rows.norm(dim=1) * anchor.norm())  # noqa: E731
    num = torch.exp(cos(pos) / 0.07).sum()
    den = num + torch.exp(cos(neg) / 0.07).sum()
    assert loss.item() == pytest.approx(-torch.log(num / den).item(), rel=1e-5)


@pytest.mark.parametrize("backbone", ["tiny_sd15", "tiny_sdxl"])
def test_steering_gradient_reaches_only_the_relation_rows(backbone):
    method = make_method(backbone)
    weights = [s.encoder.get_input_embeddings().weight for s in method.backbone.slots]
    for w in weights:
        w.requires_grad_(True)  # would receive gradient if the loss read the table's <R> row
    batch = hand_batch()
    loss = method.steering_loss(batch, method.backbone.tokenize(batch["captions"]))
    loss.backward()
    for w, rows in zip(weights, method.embeds.rows):
        assert w.grad is None
        assert rows.grad.shape == (1, w.shape[1]) and rows.grad.abs().sum() > 0


def test_steer_weight_zero_keeps_steering_out_of_the_loss():
    method = make_method("tiny_sd15", "method.steer_loss_weight=0")
    batch = hand_batch()
    ctx = ctx_for(method, seed=3)
    state = ctx.generator.get_state()
    out = method.training_step(batch, ctx)
    again = ctx_for(method)
    again.generator.set_state(state)
    denoise, _ = method.denoising_loss(batch, again)
    assert torch.equal(out.loss, denoise)  # bitwise: 1.0 * L_denoise, nothing added
    assert out.logs["loss_steer"] > 0  # still logged for the ablation


def test_empty_negatives_warn_once_and_train_with_denoising_only():
    method = make_method("tiny_sd15")
    batch = {"index": torch.tensor([0, 1]), "captions": ["a <R> the", "<R> on a"],
             "positives": ["on under", "in by"]}
    ctx = ctx_for(method, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1 = method.training_step(batch, ctx)
        out2 = method.training_step(batch, ctx)
    msgs = [str(w.message) for w in caught if "no negatives" in str(w.message)]
    assert len(msgs) == 1 and "text.json" in msgs[0]
    for out in (out1, out2):
        assert out.logs["loss_steer"] == 0.0
        assert out.loss.item() == pytest.approx(out.logs["loss_denoise"], rel=1e-7)
    out1.loss.backward()
    assert method.embeds.rows[0].grad.abs().sum() > 0  # the denoising loss still trains <R>


def test_negatives_exclude_bang_padding_of_sd2_style_tokenizers():
    method = make_method("tiny_sdxl")
    tok = method.backbone.slots[1].tokenizer  # pads with "!"
    assert tok.pad_token_id == 0
    assert 0 in method.excluded_ids[1].tolist()
    assert set(method.excluded_ids[1].tolist()) == excluded_token_ids(tok, method.embeds.token_ids[1])


# ------------------------------------------------------------------------------------------
# training rows, export, diffusers round trip


@pytest.mark.parametrize("backbone", ["tiny_sd15", "tiny_sdxl"])
def test_only_relation_rows_change_and_export_loads_in_diffusers(backbone, tmp_path):
    from relgen.backbones.loading import load_backbone
    from relgen.methods.reversion.method import ReVersion

    method = make_method(backbone)
    before = embedding_matrices(method)
    r_ids = [ids[0] for ids in method.embeds.token_ids]
    opt = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(0)
    ctx = StepContext(gen, make_timestep_sampler("relation_focal", 1000, 0.5))
    for _ in range(3):
        out = method.training_step(method.next_batch(gen), ctx)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        method.after_optimizer_step()
    files = method.export(tmp_path)  # writes the rows into the encoders, then the file
    after = embedding_matrices(method)
    for b, a, rid in zip(before, after, r_ids):
        assert a.shape == b.shape
        keep = torch.ones(b.shape[0], dtype=torch.bool)
        keep[rid] = False
        assert torch.equal(a[keep], b[keep])  # every other row bitwise unchanged
        assert not torch.equal(a[rid], b[rid])  # the <R> row moved
        assert (a[rid] - b[rid]).abs().max() > 1e-4

    # diffusers' own loader reads the exported file into fresh pipelines
    from safetensors.torch import load_file

    assert {role: p.name for role, p in files.items()} == {"embeddings": "reversion-R.safetensors"}
    path = files["embeddings"]
    fresh = load_backbone(compose(f"backbone={backbone}").backbone)
    pipe = fresh.pipeline()
    if fresh.family == "sd":
        pipe.load_textual_inversion(str(path), token="<R>")  # the model card's line
        pairs = [(pipe.tokenizer, pipe.text_encoder)]
    else:
        state = load_file(str(path))
        assert sorted(state) == ["clip_g", "clip_l"] and state["clip_l"].shape == (1, 32)
        pipe.load_textual_inversion(state["clip_l"], token="<R>", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(state["clip_g"], token="<R>", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
        pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    for (tok, enc), trained, rid in zip(pairs, after, r_ids):
        loaded_row = enc.get_input_embeddings().weight[tok.convert_tokens_to_ids("<R>")]
        assert torch.equal(loaded_row, trained[rid])

    # and relgen's own loader gives the same rows
    art = ReVersion.load_artifact(tmp_path, {"method": "reversion", "method_config": {},
                                             "files": {"embeddings": path.name}})
    for key, trained, rid in zip(method.embeds.keys, after, r_ids):
        assert torch.equal(art.rows[key][0], trained[rid])


def test_training_step_never_encodes_images(monkeypatch):
    method = make_method("tiny_sd15")

    def refuse(*args, **kwargs):
        raise AssertionError("the VAE encoder ran inside a training step")

    monkeypatch.setattr(method.backbone.vae, "encode", refuse)
    gen = torch.Generator().manual_seed(0)
    ctx = StepContext(gen, make_timestep_sampler("relation_focal", 1000, 0.5))
    out = method.training_step(method.next_batch(gen), ctx)
    assert torch.isfinite(out.loss)
    assert method.latent_dists.shape == (len(method.items), 8, 8, 8)


def test_next_batch_draws_distinct_prepositions_per_sample():
    from relgen.methods.reversion.words import load_prepositions

    method = make_method("tiny_sd15", "method.batch_size=3")
    batch = method.next_batch(torch.Generator().manual_seed(5))
    assert len(batch["positives"]) == 3 and len(batch["captions"]) == 3
    preps = set(load_prepositions())
    for sentence in batch["positives"]:
        words = sentence.split(" ")
        assert len(words) == 4 and len(set(words)) == 4 and set(words) <= preps
    again = method.next_batch(torch.Generator().manual_seed(5))
    assert again["positives"] == batch["positives"] and again["captions"] == batch["captions"]


# ------------------------------------------------------------------------------------------
# bad input


def test_relation_token_already_in_vocabulary_is_refused():
    from relgen.backbones.loading import load_backbone
    from relgen.data.registry import open_dataset
    from relgen.methods.reversion.method import ReVersion

    cfg = compose("method=reversion", "backbone=tiny_sd15", "dataset=shapes_reversion")
    bb = load_backbone(cfg.backbone)
    bb.slots[0].tokenizer.add_tokens(["<R>"])
    with pytest.raises(ConfigError, match=r"method.placeholder_token='<R>' is already a token"):
        ReVersion(cfg.method, bb, open_dataset(cfg.dataset).load())
    with pytest.raises(ConfigError, match=r"method.placeholder_token='!' is already a token"):
        make_method("tiny_sd15", "method.placeholder_token='!'")
    with pytest.raises(ConfigError, match=r"method.placeholder_token='and' already reads as the existing "
                                          r"token 'and</w>' of the backbone's text_encoder tokenizer"):
        make_method("tiny_sd15", "method.placeholder_token=and")


def test_multi_token_initializer_is_refused():
    with pytest.raises(ConfigError, match=r"method.initializer_token='relationship' is 9 tokens"):
        make_method("tiny_sd15", "method.initializer_token=relationship")


def test_steering_without_positives_or_with_bad_temperature_is_refused():
    with pytest.raises(ConfigError, match="method.num_positives=0"):
        make_method("tiny_sd15", "method.num_positives=0")
    with pytest.raises(ConfigError, match="method.temperature=0.0"):
        make_method("tiny_sd15", "method.temperature=0")
    with pytest.raises(ConfigError, match="between 0 and 56"):
        make_method("tiny_sd15", "method.num_positives=57").next_batch(torch.Generator())


# ------------------------------------------------------------------------------------------
# prompts


def test_normalize_prompt_lowercases_all_but_the_token():
    from relgen.methods.reversion.method import ReVersionArtifact, normalize_prompt

    assert normalize_prompt("Michael Jackson <R> Wall", "<R>") == "michael jackson <R> wall"
    assert normalize_prompt("Michael Jackson {} wall", "<R>") == "michael jackson <R> wall"
    assert normalize_prompt("A CAT <r> a Stone", "<R>") == "a cat <R> a stone"
    assert normalize_prompt("<R> and <R>", "<R>") == "<R> and <R>"
    art = ReVersionArtifact("<R>", {"text_encoder": torch.zeros(1, 4)}, [])
    assert art.pipeline_inputs(None, ["Cat <R> Stone"]) == {"prompt": ["cat <R> stone"]}
    assert art.pipeline_inputs(None, ["Cat {} Stone"], lowercase_prompts=False) == {"prompt": ["Cat <R> Stone"]}
    with pytest.raises(ConfigError, match="unknown generation option"):
        art.pipeline_inputs(None, ["cat <R> stone"], scales=[0.5])


# ------------------------------------------------------------------------------------------
# official format


def wide_pipeline(width: int = 768):
    """A tiny SD pipeline whose text encoder (and UNet conditioning) is ``width`` wide."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from relgen.testing import load_tiny

    bb = load_tiny("tiny_sd15")
    tok = bb.slots[0].tokenizer
    torch.manual_seed(0)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=77,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=width,
                                attention_head_dim=8, norm_num_groups=8)
    pipe = StableDiffusionPipeline(vae=bb.vae, text_encoder=enc, tokenizer=tok, unet=unet,
                                   scheduler=bb.inference_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, bb


def test_official_embeds_import_applies_and_generation_uses_the_vector(samples_dir, tmp_path):
    import shutil

    from relgen.methods.reversion.importer import import_official_embeds
    from relgen.methods.reversion.method import ReVersion

    path = samples_dir / "reversion" / "painted_on" / "learned_embeds.bin"
    raw = torch.load(path, map_location="cpu", weights_only=True)["<R>"]
    art = import_official_embeds(path)
    assert art.token == "<R>" and list(art.rows) == ["text_encoder"]
    assert art.rows["text_encoder"].shape == (1, 768) and art.rows["text_encoder"].dtype == torch.float32
    assert torch.equal(art.rows["text_encoder"][0], raw)
    assert art.rows["text_encoder"].norm().item() == pytest.approx(SAMPLE_NORM, abs=5e-4)
    # load_artifact takes the file, or a folder holding it (an official experiments/<relation>/)
    shutil.copy(path, tmp_path / "learned_embeds.bin")
    for where in (path, tmp_path):
        assert torch.equal(ReVersion.load_artifact(where, {}).rows["text_encoder"], art.rows["text_encoder"])

    pipe, tiny = wide_pipeline(768)
    art.apply(pipe)
    art.apply(pipe)  # idempotent
    tid = pipe.tokenizer.convert_tokens_to_ids("<R>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid], raw)

    seen = []
    hook = pipe.text_encoder.get_input_embeddings().register_forward_hook(
        lambda mod, inp, out: seen.append((inp[0].clone(), out.detach().clone())))
    pipe(**art.pipeline_inputs(pipe, ["Cat <R> Stone"]), num_inference_steps=1, guidance_scale=1.0,
         height=64, width=64, output_type="latent")
    hook.remove()
    ids, rows = seen[0]
    expected_ids = pipe.tokenizer("cat <R> stone", padding="max_length", max_length=77).input_ids
    assert ids[0].tolist() == expected_ids  # lower-cased, token kept
    pos = ids[0].tolist().index(tid)
    assert pos == 2 and torch.equal(rows[0, pos], raw)  # [BOS, cat, <R>, stone, ...]

    # a 32-wide pipeline cannot take a 768-wide row
    with pytest.raises(RelgenError, match=r"768-wide but the pipeline's text_encoder embeds 32-wide"):
        art.apply(tiny.pipeline())


class _NotATensor:
    pass


@pytest.mark.parametrize("content,match", [
    ([torch.zeros(768)], "holds list"),
    ({"<R>": torch.zeros(768), "<S>": torch.zeros(768)}, "a dict with 2 entries"),
    ({"<R>": torch.zeros(2, 768)}, r"shape \(2, 768\)"),
    ({"<R>": torch.zeros(768, dtype=torch.long)}, "not a floating-point tensor"),
    ({"<R>": torch.full((768,), float("nan"))}, "NaN"),
    ({"<R>": _NotATensor()}, "weights_only=True"),
])
def test_official_import_rejects_malformed_files(tmp_path, content, match):
    from relgen.methods.reversion.importer import import_official_embeds

    path = tmp_path / "learned_embeds.bin"
    torch.save(content, path)
    with pytest.raises(RelgenError, match=match) as info:
        import_official_embeds(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(RelgenError, match="file not found"):
        import_official_embeds(tmp_path / "missing.bin")


def test_an_official_file_of_the_wrong_width_names_the_file(tmp_path):
    from relgen.methods.reversion.importer import import_official_embeds

    path = tmp_path / "learned_embeds.bin"
    torch.save({"<R>": torch.ones(768)}, path)  # SD 1.5's width; the tiny encoder is 32 wide
    art = import_official_embeds(path)
    from relgen.backbones.loading import load_backbone

    pipe = load_backbone(compose("backbone=tiny_sd15").backbone).pipeline()
    with pytest.raises(RelgenError, match=rf"^{re.escape(str(path))}: token <R>: learned row is 768-wide but the "
                                          r"pipeline's text_encoder embeds 32-wide"):
        art.apply(pipe)
