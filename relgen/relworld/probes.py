"""Probes: can a relworld model carry a method's effect at all? Checked before measuring whether
a method has one.

* :func:`diffusion_classifier`: the UNet used as a zero-shot classifier of captions (Li et al.
  2023, "Your Diffusion Model is Secretly a Zero-Shot Classifier", Eq. 4-5): on a
  ground-truth scene, the caption with the lower expected denoising error is the model's
  reading of the image. A model that renders direction prefers the true caption over its
  relation-flipped and object-swapped versions; one that throws word order away scores 50 %.
  Needs no sampling (a few CPU-seconds per hundred scenes on the micro model).
* :func:`eot_polarity_probe`: does the text encoder's first EOT row (the row RRNet edits)
  say which object comes first along the axis? A logistic-regression probe trained on the EOT
  rows of half the shape pairs' captions and tested on the other half.
* :func:`caption_margins`: how close the text encoder puts a caption to its relation flip and
  its object swap (cosine of the EOT and padding rows), for unbiased and biased pairs.
* :func:`attention_shares`: where the UNet's text cross-attention looks: the share of its
  attention mass on BOS, the prompt's words, the first EOT token and the padding after it.
  RRNet edits the first EOT row only, so its effect is bounded by what that row steers.
* :func:`free_delta_oracle`: RRNet's ceiling on a model: a delta per prompt order optimised
  directly (no graph network) on the rows RRNet edits, by the denoising loss on ground-truth
  images of that order; the direction accuracy it reaches is the most an EOT-row edit can do.

Every function here takes loaded diffusers modules, so it probes any diffusers folder with the
relworld tokenizer's language, not only the shipped model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from relgen.relworld import world as rw
from relgen.relworld.detector import Rate, rate

#: The relation a wrong caption names instead: the opposite direction ("on top of" -> "below").
OPPOSITE: dict[str, str] = {"above": "below", "below": "above", "left_of": "right_of", "right_of": "left_of",
                            "on_top_of": "below"}


@dataclass(frozen=True)
class ProbeScene:
    """A ground-truth scene and the captions it is scored against (the true one first)."""

    scene: rw.Scene
    captions: dict[str, str]  # "true", "relation_flip", "object_swap", "colour_swap"


def probe_scenes(spec: rw.WorldSpec, num: int, seed: int = 0, forbidden: bool = False) -> list[ProbeScene]:
    """``num`` scenes "A r B" of a directional named relation, with their wrong captions.

    Args:
        spec: The world.
        num: Number of scenes.
        seed: Seed of the probe's own stream (independent of the pretraining stream).
        forbidden: Draw the biased pairs the way round pretraining never shows ("square above
            circle"); otherwise only unbiased shape pairs.
    """
    relations = [r for r in spec.captioned_relations if r in OPPOSITE]
    biased = {frozenset((p.first, p.second)) for p in spec.biased}
    out: list[ProbeScene] = []
    i = 0
    while len(out) < num:
        rng = rw._rng(seed, "probe-forbidden" if forbidden else "probe", i)
        i += 1
        if forbidden:
            pair = spec.biased[int(rng.integers(len(spec.biased)))]
            axis_relations = [r for r in relations if rw.RELATION_AXIS[r][0] == rw.RELATION_AXIS[pair.relation][0]]
            relation = axis_relations[int(rng.integers(len(axis_relations)))]
            sa, sb = (pair.second, pair.first) if rw.RELATION_AXIS[relation][1] else (pair.first, pair.second)
            ca, cb = (spec.colours[k] for k in rng.choice(len(spec.colours), 2, replace=False))
            scene = rw.sample_scene(rng, spec, relation, (sa, ca), (sb, cb))
            assert spec.forbidden(relation, sa, sb)
        else:
            relation = relations[int(rng.integers(len(relations)))]
            scene = rw.sample_scene(rng, spec, relation)
            if frozenset(o.shape for o in scene.objects) in biased:
                continue
        a, b = ((o.shape, o.colour) for o in scene.objects)
        captions = {
            "true": rw.prompt(a, relation, b, spec),
            "relation_flip": rw.prompt(a, OPPOSITE[relation], b, spec),
            "object_swap": rw.prompt(b, relation, a, spec),
            "colour_swap": rw.prompt((a[0], b[1]), relation, (b[0], a[1]), spec),
        }
        out.append(ProbeScene(scene, captions))
    return out


@torch.no_grad()
def caption_errors(unet, text_encoder, tokenizer, vae, scheduler, scenes: Sequence[ProbeScene],
                   timesteps: Sequence[int] = (100, 300, 500, 700, 900), noises: int = 2, seed: int = 0,
                   batch_size: int = 128, kinds: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Expected denoising error of every caption of every scene (or of the caption ``kinds``
    named): ``{kind: float64 [num_scenes]}``.

    The error is the mean squared error of the UNet's prediction against the scheduler's
    training target (epsilon, or v for v-prediction) over the same ``timesteps`` x ``noises``
    draws for every caption of a scene, so captions are compared on identical noisy inputs
    (Li et al. 2023, Sec. 3.2: shared noise reduces the variance of the comparison).
    """
    device = next(unet.parameters()).device
    images = np.stack([s.scene.render()[0] for s in scenes])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    x0 = torch.cat([vae.encode(pixels[i:i + 64]).latent_dist.mean for i in range(0, len(scenes), 64)])
    x0 = x0 * vae.config.scaling_factor
    g = torch.Generator().manual_seed(seed)
    ts = torch.tensor(list(timesteps), dtype=torch.long).repeat_interleave(noises)  # [K]
    noise = torch.randn((len(scenes), len(ts), *x0.shape[1:]), generator=g).to(device)
    kinds = list(kinds) if kinds is not None else list(scenes[0].captions)
    texts = [s.captions[k] for s in scenes for k in kinds]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    hidden = torch.cat([text_encoder(ids[i:i + 256])[0] for i in range(0, len(ids), 256)])
    hidden = hidden.view(len(scenes), len(kinds), *hidden.shape[1:])
    prediction = scheduler.config.prediction_type
    # every (scene, caption, draw) triple, batched
    jobs = [(i, c, k) for i in range(len(scenes)) for c in range(len(kinds)) for k in range(len(ts))]
    err = torch.zeros(len(scenes), len(kinds), len(ts), dtype=torch.float64)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        si = torch.tensor([j[0] for j in chunk])
        ci = torch.tensor([j[1] for j in chunk])
        ki = torch.tensor([j[2] for j in chunk])
        t = ts[ki].to(device)
        eps = noise[si, ki]
        noisy = scheduler.add_noise(x0[si], eps, t)
        target = eps if prediction == "epsilon" else scheduler.get_velocity(x0[si], eps, t)
        pred = unet(noisy, t, hidden[si, ci]).sample
        err[si, ci, ki] = (pred - target).double().pow(2).mean(dim=(1, 2, 3)).cpu()
    mean = err.mean(dim=2).numpy()
    return {kind: mean[:, c] for c, kind in enumerate(kinds)}


@dataclass
class ClassifierResult:
    """Share of scenes whose true caption has the lower error than each wrong caption."""

    unbiased: dict[str, Rate]
    forbidden: dict[str, Rate]

    def summary(self) -> float:
        """The early-stop signal: mean of the relation-flip and object-swap rates (unbiased)."""
        return 0.5 * (self.unbiased["relation_flip"].value + self.unbiased["object_swap"].value)

    def to_dict(self) -> dict:
        def rates(d: dict[str, Rate]) -> dict:
            return {k: {"rate": r.value, "k": r.k, "n": r.n, "ci95": [r.low, r.high]} for k, r in d.items()}

        return {"unbiased": rates(self.unbiased), "forbidden": rates(self.forbidden)}


def diffusion_classifier(unet, text_encoder, tokenizer, vae, scheduler, spec: Optional[rw.WorldSpec] = None,
                         num_scenes: int = 96, seed: int = 0, **kw) -> ClassifierResult:
    """The diffusion-classifier probe on ``num_scenes`` unbiased scenes and as many scenes of
    the biased pairs shown the forbidden way round (Wilson intervals: scenes are independent).

    On the forbidden scenes a model that keeps pretraining's bias prefers the seen order, so
    its ``object_swap`` rate there is low; the unbiased rates should be high.
    """
    spec = spec or rw.WorldSpec()
    out = {}
    for forbidden in (False, True):
        scenes = probe_scenes(spec, num_scenes, seed, forbidden=forbidden)
        errors = caption_errors(unet, text_encoder, tokenizer, vae, scheduler, scenes, seed=seed, **kw)
        out[forbidden] = {kind: rate(list(errors["true"] < errors[kind])) for kind in errors if kind != "true"}
    return ClassifierResult(unbiased=out[False], forbidden=out[True])


# --------------------------------------------------------------------------------------------
# What the text encoder's EOT row holds
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def eot_polarity_probe(text_encoder, tokenizer, spec: Optional[rw.WorldSpec] = None, seed: int = 0,
                       steps: int = 300) -> Rate:
    """Accuracy of a linear probe that reads, from a caption's first EOT row, whether its
    first-named object is the upper (left) one: trained on the canonical captions of half the
    unordered shape pairs (all colours, ``above``/``below``/``left_of``/``right_of``), tested on
    the other half (Wilson interval over test captions). 50 % is a bag of words."""
    spec = spec or rw.WorldSpec()
    relations = [r for r in ("above", "below", "left_of", "right_of") if r in spec.captioned_relations]
    pairs = [(x, y) for i, x in enumerate(spec.shapes) for y in spec.shapes[i + 1:]]
    order = np.random.default_rng([seed, 61]).permutation(len(pairs))
    split = {pairs[i]: k < len(pairs) // 2 for k, i in enumerate(order)}
    texts, labels, train = [], [], []
    for (x, y), is_train in split.items():
        for sa, sb in ((x, y), (y, x)):
            for ca in spec.colours:
                for cb in spec.colours:
                    if ca == cb:
                        continue
                    for r in relations:
                        texts.append(rw.prompt((sa, ca), r, (sb, cb), spec))
                        labels.append(float(rw.RELATION_AXIS[r][1]))
                        train.append(is_train)
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    hidden = torch.cat([text_encoder(ids[i:i + 512])[0] for i in range(0, len(ids), 512)])
    eot = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
    x = hidden[torch.arange(len(ids)), eot].float()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    y, train_mask = torch.tensor(labels), torch.tensor(train)
    with torch.enable_grad():
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps)

        def closure():
            opt.zero_grad()
            logits = x[train_mask] @ w + b
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[train_mask]) + 1e-3 * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    pred = (x[~train_mask] @ w.detach() + b.detach()) > 0
    return rate((pred.float() == y[~train_mask]).tolist())


@torch.no_grad()
def caption_margins(text_encoder, tokenizer, spec: Optional[rw.WorldSpec] = None) -> dict:
    """How far the text encoder puts a caption from its relation flip and from its object swap:
    the mean cosine similarity of the first EOT rows, and of the padding rows after it (aligned
    from each caption's EOT), over the canonical captions of every ordered shape pair (first two
    colours, ``above`` and ``left_of``), split into unbiased pairs and the biased pairs along
    their biased axis. 1.0 is a bag of words for that change; a UNet has to tell apart rows whose
    cosine is near 1 to render what changed."""
    spec = spec or rw.WorldSpec()
    colours = spec.colours[:2]
    groups: dict[str, dict[str, list]] = {"unbiased": {"relation_flip": [], "object_swap": []},
                                          "biased": {"relation_flip": [], "object_swap": []}}
    biased = {frozenset((p.first, p.second)): rw.RELATION_AXIS[p.relation][0] for p in spec.biased}
    for sa in spec.shapes:
        for sb in spec.shapes:
            if sa == sb:
                continue
            for relation in ("above", "left_of"):
                a, b = (sa, colours[0]), (sb, colours[1])
                group = "biased" if biased.get(frozenset((sa, sb))) == rw.RELATION_AXIS[relation][0] else "unbiased"
                caption = rw.prompt(a, relation, b, spec)
                groups[group]["relation_flip"].append((caption, rw.prompt(a, OPPOSITE[relation], b, spec)))
                groups[group]["object_swap"].append((caption, rw.prompt(b, relation, a, spec)))
    out: dict = {}
    for group, changes in groups.items():
        out[group] = {}
        for change, pairs in changes.items():
            enc = tokenizer([t for pair in pairs for t in pair], padding="max_length",
                            max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
            hidden = text_encoder(enc.input_ids)[0]
            eot = enc.attention_mask.sum(dim=1) - 1
            eot_cos, pad_cos = [], []
            for k in range(len(pairs)):
                i, j = 2 * k, 2 * k + 1
                n = hidden.shape[1] - int(max(eot[i], eot[j]))
                x, y = hidden[i, int(eot[i]):int(eot[i]) + n], hidden[j, int(eot[j]):int(eot[j]) + n]
                cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
                eot_cos.append(float(cos[0]))
                pad_cos.append(float(cos[1:].mean()))
            out[group][change] = {"eot": float(np.mean(eot_cos)), "padding": float(np.mean(pad_cos)),
                                  "captions": len(pairs)}
    return out


# --------------------------------------------------------------------------------------------
# Cross-attention shares
# --------------------------------------------------------------------------------------------


class _RecordingProcessor:
    """Diffusers' plain attention processor that also records, for text cross-attention, the
    attention mass each key position receives (mean over heads and queries, per sample)."""

    def __init__(self, sink: list):
        from diffusers.models.attention_processor import AttnProcessor

        self.inner, self.sink = AttnProcessor(), sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None:
            x = hidden_states if hidden_states.ndim == 3 else hidden_states.flatten(2).transpose(1, 2)
            q = attn.head_to_batch_dim(attn.to_q(x))
            k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            probs = attn.get_attention_scores(q, k, None)  # [B * heads, Q, L]
            b = encoder_hidden_states.shape[0]
            self.sink.append(probs.view(b, attn.heads, *probs.shape[1:]).mean(dim=(1, 2)).detach())
        return out


@torch.no_grad()
def attention_shares(unet, text_encoder, tokenizer, vae, scheduler, scenes: Sequence[ProbeScene],
                     timesteps: Sequence[int] = (300, 600, 900), seed: int = 0) -> dict[str, float]:
    """Mean share of text cross-attention mass on ``bos``, ``words``, ``eot`` (the first EOT
    token) and ``padding`` (every position after it), over the true captions of ``scenes``,
    every cross-attention layer and ``timesteps`` (ground-truth latents noised with a fixed
    seed). The shares of one sample sum to 1."""
    sink: list[torch.Tensor] = []
    original = unet.attn_processors
    unet.set_attn_processor({name: _RecordingProcessor(sink) if name.endswith("attn2.processor") else proc
                             for name, proc in original.items()})
    try:
        images = np.stack([s.scene.render()[0] for s in scenes])
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        x0 = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        ids = tokenizer([s.captions["true"] for s in scenes], padding="max_length",
                        max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        hidden = text_encoder(ids)[0]
        eot = (ids == tokenizer.eos_token_id).int().argmax(dim=1)  # first EOT per prompt
        g = torch.Generator().manual_seed(seed)
        for t in timesteps:
            tt = torch.full((len(scenes),), int(t), dtype=torch.long)
            unet(scheduler.add_noise(x0, torch.randn(x0.shape, generator=g), tt), tt, hidden)
    finally:
        unet.set_attn_processor(original)
    mass = torch.stack(sink).mean(dim=0)  # [B, L]: mean over layers and timesteps
    pos = torch.arange(mass.shape[1])[None]
    parts = {"bos": pos == 0, "words": (pos > 0) & (pos < eot[:, None]), "eot": pos == eot[:, None],
             "padding": pos > eot[:, None]}
    return {k: float((mass * m).sum(dim=1).mean()) for k, m in parts.items()}


# --------------------------------------------------------------------------------------------
# Free-delta oracle
# --------------------------------------------------------------------------------------------

#: Which conditioning rows the oracle's delta moves: RRNet's (the first EOT row), the first
#: EOT row and the padding after it (on SD 1.x's tokenizer those are EOT tokens too), or all.
ORACLE_ROWS = ("eot", "eot_and_padding", "all")


def row_mask(ids: torch.Tensor, eos_id: int, rows: str) -> torch.Tensor:
    """``bool [B, L]``: the rows a delta of kind ``rows`` (:data:`ORACLE_ROWS`) moves."""
    if rows not in ORACLE_ROWS:
        raise ValueError(f"rows must be one of {ORACLE_ROWS}, got {rows!r}")
    eot = (ids == eos_id).int().argmax(dim=1)[:, None]
    pos = torch.arange(ids.shape[1])[None]
    if rows == "eot":
        return pos == eot
    if rows == "eot_and_padding":
        return pos >= eot
    return torch.ones_like(ids, dtype=torch.bool)


@dataclass
class OracleResult:
    rows: str
    direction: Rate  # both prompts of a pair right at the same seed
    unseen: Rate  # relation accuracy of the direction pretraining never shows
    objects: Rate  # both objects present
    base_direction: Rate
    base_unseen: Rate
    base_objects: Rate

    def to_dict(self) -> dict:
        return {k: (v if isinstance(v, str) else {"rate": v.value, "k": v.k, "n": v.n, "ci95": [v.low, v.high]})
                for k, v in vars(self).items()}


def oracle_prompts(spec: rw.WorldSpec, per_pair: int = 2, seed: int = 0) -> list[tuple[tuple, str, tuple]]:
    """Object-swapped prompt orders of the biased pairs: ``(unseen, seen)`` per colour choice,
    as ``(A, relation, B)`` with ``(shape, colour)`` objects; the unseen order comes first."""
    out = []
    for index, pair in enumerate(spec.biased):
        rng = rw._rng(seed, "oracle", index)
        for _ in range(per_pair):
            ca, cb = (spec.colours[k] for k in rng.choice(len(spec.colours), 2, replace=False))
            a, b = (pair.second, ca), (pair.first, cb)
            out += [(a, pair.relation, b), (b, pair.relation, a)]
    return out


def free_delta_oracle(pipe, spec: Optional[rw.WorldSpec] = None, rows: str = "eot", per_pair: int = 2,
                      train_images: int = 16, steps: int = 150, lr: float = 0.05, batch_size: int = 8,
                      seeds: int = 8, num_inference_steps: Optional[int] = None, guidance: float = 5.0,
                      seed: int = 0, orders: Optional[Sequence[tuple[tuple, str, tuple]]] = None,
                      relation_reading: str = "strict") -> OracleResult:
    """Optimise one delta per prompt order (``[rows, D]`` added to the conditioning rows of
    ``rows``) by the model's denoising loss on ``train_images`` ground-truth renders of that
    order, then render each prompt with and without its delta at ``seeds`` seeds and read
    them: direction and relation in ``relation_reading`` (``strict``: objects found by colour and
    shape; ``colour``: by colour), objects always by colour and shape.

    ``orders`` are ``(unseen, seen)`` object-swapped prompt orders as ``(A, relation, B)``
    (default: :func:`oracle_prompts`); an RRNet network's own pair makes this the ceiling of
    its edit on its own pair.

    ``pipe`` is a diffusers Stable Diffusion pipeline of a relworld model (its scheduler is the
    sampler; training uses the DDPM form of the same schedule).
    """
    from diffusers import DDPMScheduler

    from relgen.relworld.detector import Detector, direction_accuracy, object_accuracy, relation_accuracy

    spec = spec or rw.WorldSpec()
    tok, te, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    train_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    steps_inf = num_inference_steps or 25
    from relgen.relworld.detector import DetectorConfig

    detector = Detector(spec)
    relation_detector = Detector(spec, DetectorConfig(match_shape=relation_reading != "colour"))
    orders = list(orders) if orders is not None else oracle_prompts(spec, per_pair, seed)
    texts = [rw.prompt(a, r, b, spec) for a, r, b in orders]
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = te(ids)[0]
        uncond = te(empty)[0]
    masks = row_mask(ids, tok.eos_token_id, rows)
    g = torch.Generator().manual_seed(seed)
    deltas = []
    for k, (a, r, b) in enumerate(orders):
        renders = np.stack([rw.sample_scene(rw._rng(seed, "oracle-images", k, i), spec, r, a, b).render()[0]
                            for i in range(train_images)])
        with torch.no_grad():
            x = torch.from_numpy(renders).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            x0 = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        delta = torch.zeros(int(masks[k].sum()), hidden.shape[-1], requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        for _ in range(steps):
            pick = torch.randint(len(x0), (batch_size,), generator=g)
            noise = torch.randn((batch_size, *x0.shape[1:]), generator=g)
            t = torch.randint(0, train_sched.config.num_train_timesteps, (batch_size,), generator=g)
            cond = hidden[k:k + 1].repeat(batch_size, 1, 1).clone()
            cond[:, masks[k]] = cond[:, masks[k]] + delta
            pred = unet(train_sched.add_noise(x0[pick], noise, t), t, cond).sample
            target = noise if train_sched.config.prediction_type == "epsilon" else \
                train_sched.get_velocity(x0[pick], noise, t)
            loss = (pred - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        deltas.append(delta.detach())

    def render(k: int, with_delta: bool) -> list:
        cond = hidden[k:k + 1].clone()
        if with_delta:
            cond[:, masks[k]] = cond[:, masks[k]] + deltas[k]
        gens = [torch.Generator().manual_seed(seed + i) for i in range(seeds)]
        return pipe(prompt_embeds=cond.repeat(seeds, 1, 1), negative_prompt_embeds=uncond.repeat(seeds, 1, 1),
                    num_inference_steps=steps_inf, guidance_scale=guidance, generator=gens,
                    output_type="np").images

    out = {}
    for with_delta in (True, False):
        readings = []
        for k, (a, r, b) in enumerate(orders):
            images = render(k, with_delta)
            images = [(img * 255).round().astype(np.uint8) for img in images]
            readings.append([(relation_detector.read(img, a, r, b), detector.read(img, a, r, b)) for img in images])
        rel = [[x for x, _ in row] for row in readings]
        pairs = [(x, y) for ab, ba in zip(rel[0::2], rel[1::2]) for x, y in zip(ab, ba)]
        flat = [y for row in readings for _, y in row]
        out[with_delta] = (direction_accuracy(pairs), relation_accuracy([x for row in rel[0::2] for x in row]),
                           object_accuracy(flat))
    return OracleResult(rows, *out[True], *out[False])


__all__ = ["OPPOSITE", "ORACLE_ROWS", "ClassifierResult", "OracleResult", "ProbeScene", "attention_shares",
           "caption_margins", "eot_polarity_probe",
           "caption_errors", "diffusion_classifier", "free_delta_oracle", "oracle_prompts", "probe_scenes",
           "row_mask"]
