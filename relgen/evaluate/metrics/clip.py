"""CLIP scores: CLIP-T, CLIP-R (RelationBooth), ReVersion's relation and entity scores, CLIP-I.

* ``clip_t``: ``scale * max(cos(E_img, E_text), 0)`` between the image and its prompt with the
  relation written out (CLIPScore, Hessel et al. 2021, with torchmetrics' ``w = 100``); beside
  it ``clip_entity``, the same against each entity word (ReVersion's entity score), averaged.
* ``clip_r``: the same against the predicate alone (RelationBooth's CLIP-R; ReVersion's
  relation score against the relation's name, not the learned token CLIP cannot read), and
  ``clip_r_top1``: whether the image's own predicate scores highest among the predicates of
  the prompt set (a zero-shot relation classification; needs two or more predicates).
* ``clip_i``: ``scale * cos`` of the image's and each reference image's CLIP image embeddings
  (DreamBooth's CLIP-I, Ruiz et al. 2023), per entity (cropped to the entity's box when
  known), averaged over references and entities.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from relgen.evaluate.images import open_rgb
from relgen.evaluate.loading import crop, from_pretrained, shared_model, torch_dtype
from relgen.evaluate.metrics.base import RATE, SCORE, Metric, batched, register_metric
from relgen.evaluate.samples import ImageScore, Sample


class ClipEmbedder:
    """A CLIP model and processor that return unit-norm image and text embeddings.

    Args:
        cfg: :class:`~relgen.evaluate.config.ClipConfig`.
        device: Where it runs.
    """

    def __init__(self, cfg: Any, device: torch.device):
        from transformers import AutoProcessor, CLIPModel

        self.cfg = cfg
        self.device = device
        self.dtype = torch_dtype(cfg.dtype, "clip")
        self.model = from_pretrained(CLIPModel, cfg.pretrained, "clip", cfg.revision, dtype=self.dtype)
        self.model.to(device).eval()
        self.processor = from_pretrained(AutoProcessor, cfg.pretrained, "clip", cfg.revision)
        self._text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def images(self, images: list[Any]) -> torch.Tensor:
        """``[N, D]`` unit-norm projected image embeddings (float32, on the CPU)."""
        out = []
        for chunk in batched(images, self.cfg.batch_size):
            pixels = self.processor(images=[im.convert("RGB") for im in chunk], return_tensors="pt")["pixel_values"]
            feats = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)).pooler_output
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        """``[N, D]`` unit-norm projected text embeddings (cached per text)."""
        todo = sorted({t for t in texts if t not in self._text_cache})
        for chunk in batched(todo, self.cfg.batch_size):
            tok = self.processor.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt")
            feats = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                 attention_mask=tok["attention_mask"].to(self.device)).pooler_output
            for text, f in zip(chunk, torch.nn.functional.normalize(feats.float(), dim=-1).cpu()):
                self._text_cache[text] = f
        return torch.stack([self._text_cache[t] for t in texts])


def clip_embedder(cfg: Any, device: torch.device) -> ClipEmbedder:
    return shared_model("clip", cfg, "clip", device, lambda: ClipEmbedder(cfg, device))


def scaled_cosine(u: torch.Tensor, v: torch.Tensor, scale: float, clamp_negative: bool) -> torch.Tensor:
    """Row-wise ``scale * cos(u_i, v_i)`` of unit vectors, negatives clipped to 0 if asked
    (torchmetrics' CLIPScore: ``100 * max(cos, 0)``)."""
    cos = (u * v).sum(dim=-1)
    return scale * (cos.clamp(min=0) if clamp_negative else cos)


@register_metric
class ClipT(Metric):
    """Image-prompt CLIP similarity, and the entity score beside it."""

    name = "clip_t"
    outputs = {"clip_t": SCORE, "clip_entity": SCORE}
    config_key = "clip"

    def score(self, samples: list[Sample]) -> list[ImageScore]:
        clip = clip_embedder(self.cfg, self.device)
        img = clip.images([s.image for s in samples])
        prompt = clip.texts([s.prompt.readable for s in samples])
        t = scaled_cosine(img, prompt, self.cfg.scale, self.cfg.clamp_negative)
        a = scaled_cosine(img, clip.texts([self.cfg.entity_template.format(s.prompt.a) for s in samples]),
                          self.cfg.scale, self.cfg.clamp_negative)
        b = scaled_cosine(img, clip.texts([self.cfg.entity_template.format(s.prompt.b) for s in samples]),
                          self.cfg.scale, self.cfg.clamp_negative)
        return [ImageScore({"clip_t": float(t[i]), "clip_entity": float(0.5 * (a[i] + b[i]))},
                           verdict=f"T {float(t[i]):.1f}") for i in range(len(samples))]


@register_metric
class ClipR(Metric):
    """Image-predicate CLIP similarity and the zero-shot relation classification."""

    name = "clip_r"
    outputs = {"clip_r": SCORE, "clip_r_top1": RATE}
    config_key = "clip"

    def score(self, samples: list[Sample]) -> list[ImageScore]:
        clip = clip_embedder(self.cfg, self.device)
        img = clip.images([s.image for s in samples])
        own = [s.prompt.predicate for s in samples]
        r = scaled_cosine(img, clip.texts(own), self.cfg.scale, self.cfg.clamp_negative)
        labels = sorted(set(own))
        top1: list[Optional[float]] = [None] * len(samples)
        if len(labels) >= 2:
            best = (img @ clip.texts(labels).T).argmax(dim=-1)
            top1 = [float(labels[int(best[i])] == own[i]) for i in range(len(samples))]
        return [ImageScore({"clip_r": float(r[i]), "clip_r_top1": top1[i]}, verdict=f"R {float(r[i]):.1f}")
                for i in range(len(samples))]


def reference_similarity(samples: list[Sample], embed, scale: float) -> list[Optional[float]]:
    """Per sample: ``scale * cos`` with each entity's references (box crops when known),
    averaged over references, then over entities; ``None`` without references."""
    cache: dict[tuple[str, Optional[tuple]], torch.Tensor] = {}
    needed = []
    for s in samples:
        for entity, paths in s.prompt.references.items():
            boxes = s.prompt.reference_boxes.get(entity) or [None] * len(paths)
            needed += [(p, tuple(b) if b is not None else None) for p, b in zip(paths, boxes)]
    todo = sorted({k for k in needed if k not in cache}, key=str)
    if todo:

        feats = embed([crop(open_rgb(p), box) for p, box in todo])
        cache.update(zip(todo, feats))
    img = embed([s.image for s in samples])
    out: list[Optional[float]] = []
    for i, s in enumerate(samples):
        per_entity = []
        for entity, paths in s.prompt.references.items():
            boxes = s.prompt.reference_boxes.get(entity) or [None] * len(paths)
            refs = torch.stack([cache[(p, tuple(b) if b is not None else None)] for p, b in zip(paths, boxes)])
            per_entity.append(float(scale * (refs @ img[i]).mean()))
        out.append(sum(per_entity) / len(per_entity) if per_entity else None)
    return out


@register_metric
class ClipI(Metric):
    """Image-reference CLIP image similarity per entity."""

    name = "clip_i"
    outputs = {"clip_i": SCORE}
    config_key = "clip"
    needs_references = True

    def score(self, samples: list[Sample]) -> list[ImageScore]:
        clip = clip_embedder(self.cfg, self.device)
        values = reference_similarity(samples, clip.images, self.cfg.scale)
        return [ImageScore({"clip_i": v}, verdict="I -" if v is None else f"I {v:.1f}") for v in values]
