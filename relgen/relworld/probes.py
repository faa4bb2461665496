"""Probes: can a relworld model carry a method's effect at all? Checked before measuring whether
a method has one.

* :func:`diffusion_classifier`: the UNet used as a zero-shot classifier of captions (Li et al.
  2023, "Your Diffusion Model is Secretly a Zero-Shot Classifier", Eq. 4-5): on a
  ground-truth scene, the caption with the lower expected denoising error is the model's
  reading of the image. A model that renders direction prefers the true caption over its
  relation-flipped and object-swapped versions; one that throws word order away scores 50 %.
  Needs no sampling (a few CPU-seconds per hundred scenes on the micro model).

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
                   batch_size: int = 128) -> dict[str, np.ndarray]:
    """Expected denoising error of every caption of every scene: ``{kind: float64 [num_scenes]}``.

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
    kinds = list(scenes[0].captions)
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


__all__ = ["OPPOSITE", "ClassifierResult", "ProbeScene", "caption_errors", "diffusion_classifier", "probe_scenes"]
