"""Typed schemas of ``python -m relgen.evaluate`` and of every metric model.

Each metric model is a nested config group under ``eval/`` (``eval/judge``, ``eval/clip``,
``eval/dino``, ``eval/detector``, ``eval/fid``); the YAML options in ``conf/eval/*/`` name the
model (hub id or local folder) and its settings, and these schemas check their types when
Hydra composes. The defaults here are the ones the YAML defaults select, so the Python API
(``relgen.evaluate.metrics.build_metric``) gives the same models as the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

#: RRNet's five judge questions, asked in order (the RRNet paper's relationship generation accuracy).
#: ``{a}`` and ``{b}`` are the entity words, ``{first}`` and ``{second}`` the two prompts of an
#: object-swapped pair with the relation written out.
RRNET_QUESTIONS: tuple[str, ...] = (
    "Is there any {a} in the image?",
    "Is there any {b} in the image?",
    "Are both {a} and {b} present in the image?",
    "Can you infer the relationship that exists between {a} and {b} in the image?",
    "Is there {first} or {second} or neither?",
)

#: Relation phrases the box rule can decide, by relation key (GenEval and T2I-CompBench's
#: spatial relations plus "on top of" and "inside"). Prompt predicates are matched to these
#: after lower-casing; a predicate not listed makes the detector metric not applicable.
DETECTOR_RELATION_WORDS: dict[str, list[str]] = {
    "above": ["above", "over"],
    "below": ["below", "under", "beneath", "underneath"],
    "left_of": ["left of", "to the left of", "on the left of"],
    "right_of": ["right of", "to the right of", "on the right of"],
    "on_top_of": ["on top of", "on", "placed on", "sitting on", "resting on"],
    "inside": ["inside", "in", "within", "inside of", "contained in"],
    "next_to": ["next to", "beside", "near", "by"],
}


@dataclass
class ModelConfig:
    """A metric model: where its weights come from and how it runs.

    Attributes:
        pretrained: Hub id or local folder (``save_pretrained`` layout).
        revision: Hub revision (``None``: the default branch).
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        batch_size: Images per forward pass.
    """

    pretrained: str = ""
    revision: Optional[str] = None
    dtype: str = "float32"
    batch_size: int = 16


@dataclass
class ClipConfig(ModelConfig):
    """CLIP for CLIP-T, CLIP-R and CLIP-I.

    The papers do not name their CLIP; the default is the ViT-L/14 of torchmetrics' CLIPScore.

    Attributes:
        scale: Multiplier of the cosine (100 as in RelationBooth's tables and CLIPScore).
        clamp_negative: Clip negative image-text cosines to 0 (CLIPScore, Hessel et al. 2021).
        entity_template: Text an entity word is scored against (ReVersion's entity score).
    """

    pretrained: str = "openai/clip-vit-large-patch14"
    scale: float = 100.0
    clamp_negative: bool = True
    entity_template: str = "a photo of a {}"


@dataclass
class DinoConfig(ModelConfig):
    """A self-supervised ViT for the DINO image-reference score: the cosine of the class-token
    embeddings (DreamBooth, Ruiz et al. 2023, used DINO ViT-S/16; that is the default).

    Attributes:
        scale: Multiplier of the cosine (100 as in RelationBooth's tables).
    """

    pretrained: str = "facebook/dino-vits16"
    scale: float = 100.0


@dataclass
class DetectorConfig(ModelConfig):
    """An open-vocabulary detector and the box rule that reads a spatial relation.

    Attributes:
        threshold: Smallest detection score that counts an object as present (GenEval's 0.3).
        query_template: Text query per entity word.
        inside_fraction: Share of A's box within B's box for "A inside B".
        touch_fraction: Largest gap (fraction of the image height) between A's bottom and B's
            top for "A on top of B".
        relation_words: Relation phrases by relation key (see :data:`DETECTOR_RELATION_WORDS`).
    """

    pretrained: str = "google/owlv2-base-patch16-ensemble"
    threshold: float = 0.3
    query_template: str = "a photo of a {}"
    inside_fraction: float = 0.8
    touch_fraction: float = 0.05
    relation_words: dict[str, list[str]] = field(
        default_factory=lambda: {k: list(v) for k, v in DETECTOR_RELATION_WORDS.items()})


@dataclass
class JudgeConfig(ModelConfig):
    """A vision-language judge answering RRNet's questions.

    RRNet used Qwen-VL-Chat and LLaVA; Qwen-VL-Chat needs remote code, so the judges are the
    ones native to transformers: LLaVA-1.5 (default) and Qwen2-VL.

    Attributes:
        questions: The five questions (see :data:`RRNET_QUESTIONS`).
        max_new_tokens: Longest answer generated.
        multi_turn: Ask the questions as one conversation (each answer stays in the context),
            as a chat user would; ``False`` asks each on its own.
    """

    pretrained: str = "llava-hf/llava-1.5-7b-hf"
    dtype: str = "float16"
    batch_size: int = 4
    questions: list[str] = field(default_factory=lambda: list(RRNET_QUESTIONS))
    max_new_tokens: int = 40
    multi_turn: bool = True


@dataclass
class FidConfig:
    """Fréchet distance between generated images and a reference folder.

    Attributes:
        features: ``inception`` (FID, Heusel et al. 2017: torchmetrics with the TF-ported
            Inception v3 of torch-fidelity) or ``dino`` (the Fréchet distance in DINOv2
            features, Stein et al. 2023, through transformers).
        inception_weights: The Inception v3 weights file (``weights-inception-2015-12-05-*.pth``
            of torch-fidelity's releases); required for ``features=inception``.
        pretrained: The DINO model for ``features=dino``.
        reference_dir: Folder of reference images (COCO val in RRNet).
        feature_dim: Inception feature layer (64, 192, 768 or 2048).
        max_reference: Use at most this many reference images (sorted by name); 0: all.
        batch_size: Images per forward pass.
        dtype: Feature model dtype (the statistics are always float64).
    """

    features: str = "inception"
    inception_weights: Optional[str] = None
    pretrained: str = "facebook/dinov2-base"
    reference_dir: Optional[str] = None
    feature_dim: int = 2048
    max_reference: int = 0
    batch_size: int = 32
    dtype: str = "float32"


@dataclass
class RelworldMetricConfig:
    """The relworld exact detector as a metric (see :class:`relgen.relworld.detector.DetectorConfig`).

    Attributes:
        match_shape: The strict reading (shape and colour); ``False`` is the colour-only reading.
        colour_tolerance: RGB distance to a palette colour.
    """

    match_shape: bool = True
    colour_tolerance: float = 70.0


@dataclass
class EvalModelsConfig:
    """The ``eval`` node: device, every metric model, and the reference images.

    Attributes:
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        references: Reference images of ``clip_i`` and ``dino`` for prompts that carry none: a
            folder (sub-folders named after entity words hold those entities' images; images
            directly in it are references of the whole image). ``None``: the images of the
            run's training dataset (:mod:`relgen.evaluate.references`).
    """

    device: str = "auto"
    references: Optional[str] = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    fid: FidConfig = field(default_factory=FidConfig)
    relworld: RelworldMetricConfig = field(default_factory=RelworldMetricConfig)


_store = ConfigStore.instance()
_store.store(group="schema/eval/judge", name="judge", node=JudgeConfig)
_store.store(group="schema/eval/clip", name="clip", node=ClipConfig)
_store.store(group="schema/eval/dino", name="dino", node=DinoConfig)
_store.store(group="schema/eval/detector", name="detector", node=DetectorConfig)
_store.store(group="schema/eval/fid", name="fid", node=FidConfig)


def as_object(node: Any, schema: type) -> Any:
    """A schema instance from a dataclass, a dict or a DictConfig (unknown keys refused)."""
    from omegaconf import OmegaConf

    if isinstance(node, schema):
        return node
    if node is None:
        return schema()
    merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    return OmegaConf.to_object(merged)


#: The words of ReVersion's benchmark relations, for CLIP and the judge (which cannot read
#: the learned token): the relation names of the ReVersion paper's benchmark, written out.
REVERSION_RELATION_WORDS: dict[str, str] = {
    "painted_on": "painted on",
    "carved_by": "carved by",
    "shake_hands": "shaking hands with",
    "hug": "hugging",
    "back2back": "back to back with",
    "inside": "inside",
    "on": "on",
    "hanging_from": "hanging from",
    "wrapped_in": "wrapped in",
    "ride_on": "riding on",
}


@dataclass
class EvaluateConfig:
    """``python -m relgen.evaluate``: what to score, on which conditions, with which metrics.

    Attributes:
        run_dir: A finished run (its ``export/``); the method's condition(s) and, with
            ``include_base``, the base model's are generated from it.
        baseline: ``base`` (the base model) or another run's folder (e.g. textual inversion);
            every other condition is compared with it. ``None``: ``base`` (RRNet: λ = 0).
        include_base: Also generate the base model's images.
        lambdas: RRNet: one condition per λ (``None``: the run's grid, ``method.grid_scales``).
        images_dir: Score existing images instead: ``<images_dir>/<condition>/<prompt id
            slug>/<seed>.png`` (the layout the harness writes to its cache).
        prompts: ``reversion_benchmark``, ``rrnet_pairs`` or a prompt file (JSON). ``None``: the
            run's default: ``rrnet_pairs`` for an RRNet run on the relworld model, else
            ``reversion_benchmark``.
        relation: ``reversion_benchmark``: only this relation.
        limit: Keep the first N prompts (per relation for ``reversion_benchmark``).
        metrics: Metric names (``python -m relgen.list`` does not list these; see
            :mod:`relgen.evaluate.metrics`). ``None``: the run's default: ``[relworld]`` (offline,
            relworld's exact detector) for a run on the relworld model, else ``[clip_t, clip_r]``.
        num_images: Seeds per prompt when ``seeds`` is not given: ``seed .. seed+num_images-1``.
        seeds: The seeds, shared by every condition.
        steps, guidance, scheduler: The sampler (``None``: the run's sample settings, then the
            backbone's).
        batch_size: Images per generation call.
        out_dir: Report folder (default ``<run_dir>/eval/<prompt set>-<timestamp>``).
        cache: Reuse generated images and scores of earlier evaluations.
        grid_rows: Rows (prompt x seed) per grid image.
        resamples: Bootstrap resamples.
        relation_words: Words of each ReVersion benchmark relation.
    """

    run_dir: Optional[str] = None
    baseline: Optional[str] = None
    include_base: bool = True
    lambdas: Optional[list[float]] = None
    images_dir: Optional[str] = None
    prompts: Optional[str] = None  # None: the run's default (relworld RRNet run: rrnet_pairs)
    relation: Optional[str] = None
    limit: Optional[int] = None
    metrics: Optional[list[str]] = None  # None: the run's default (relworld run: [relworld])
    num_images: int = 4
    seed: int = 0
    seeds: Optional[list[int]] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None
    scheduler: Optional[str] = None
    batch_size: int = 4
    out_dir: Optional[str] = None
    output_root: str = "outputs"
    cache: bool = True
    grid_rows: int = 24
    resamples: int = 10_000
    relation_words: dict[str, str] = field(default_factory=lambda: dict(REVERSION_RELATION_WORDS))
    eval: EvalModelsConfig = field(default_factory=EvalModelsConfig)


_store.store(name="evaluate_schema", node=EvaluateConfig)
