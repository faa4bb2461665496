"""Config schema of the relationbooth method (light: no torch import).

Defaults follow DreamRelation's released ``train.sh``/``train.py``/``inference.py`` on top of
MS-Diffusion's image-prompt branch. ``experiment=relationbooth_paper`` holds the paper's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from relgen.config import MethodConfig
from relgen.registry import register_method_schema

# DreamRelation inference.py's negative prompt
RELEASED_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
# the image encoder MS-Diffusion and DreamRelation use
RELEASED_IMAGE_ENCODER = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"


@dataclass
class TinyBranchConfig:
    """Sizes of the image branch on tiny (random-weight) backbones, so everything runs offline.

    The tiny CLIP vision model is built when ``image_encoder`` is unset; the resampler sizes
    replace ``resampler_*`` on tiny backbones and whenever that random encoder is used.
    """

    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    projection_dim: int = 16
    resampler_dim: int = 32
    resampler_depth: int = 1
    resampler_dim_head: int = 8
    resampler_heads: int = 4
    resampler_ff_mult: int = 2


@dataclass
class RelationBoothConfig(MethodConfig):
    """RelationBooth (released as DreamRelation): attn2 LoRA on an MS-Diffusion image branch.

    Attributes (beyond :class:`relgen.config.MethodConfig`):
        resolution: training resolution; None = the backbone's native one.
        rank, lora_alpha, lora_init, lora_targets: the peft LoRA (DreamRelation train.py).
        lora_seed: seed of the LoRA's random initialisation.
        image_encoder: transformers ``CLIPVisionModelWithProjection`` hub id or local folder; None
            builds a seeded tiny random one (offline). Released: laion/CLIP-ViT-bigG-14-laion2B-39B-b160k.
        clipself_checkpoint: CLIPSelf ``epoch_6.pt`` for the local tokens; None uses the image
            encoder itself for the dense features (same value-path read-out).
        ms_adapter: MS-Diffusion ``ms_adapter.bin`` (or an exported ``relationbooth-*-image-branch.safetensors``);
            None initialises the branch randomly (to_k_ip/to_v_ip copied from to_k/to_v).
        branch_seed: seed of every random part of the image branch.
        scale: image-attention weight gamma of the masked parallel cross-attention.
        num_dummy_tokens, tokens_per_entity: image-token layout [dummy, entity 1, entity 2, ...].
        resampler_*: MS-Diffusion's resampler sizes (input/output/phrase widths come from the
            backbone and the image encoder); tiny backbones and the random tiny encoder use
            ``tiny.resampler_*``.
        mask_bias: additive logit bias of disallowed (query, image token) pairs.
        reference_resize: reference images are first resized to this square (DreamRelation: 512).
        clip_mean, clip_std: CLIP pixel normalisation.
        local_grid: local tokens per image = local_grid².
        local_image_size: local encoder input side; None = 4 x the image encoder's (896 for 224).
        local_tokens_train: append the local tokens in training (the released train.py does not).
        local_tokens_inference: append the local tokens at generation. None (default): exactly
            when ``clipself_checkpoint`` is set, as DreamRelation's inference.py adds them only
            when its CLIPSelf weights exist; true: always, from the plain image encoder when no
            CLIPSelf checkpoint is given (not a released variant); false: never. The export
            records the choice and the encoder the tokens come from.
        kp_weight: keypoint matching loss weight; kp_max_timestep: it applies only where
            t <= this (None: at every t).
        calibration: the predicate attention calibration loss. None (default): on when every
            item has a ``predicate`` (DreamRelation train.py needs one per item), otherwise off,
            said once before training (a dry run says which); true: on, and every item must have
            a predicate; false: off.
        cal_weight: its weight.
        cal_layer_rule: which cross-attention layers enter it: ``absolute`` (default, as
            DreamRelation train.py: layers with at most ``cal_max_queries`` queries, 32² = 1024)
            or ``relative`` (query-grid side <= ``cal_max_side_fraction`` x the latent side, for
            small models whose grids are all under 32²). Both pick SDXL's 32 x 32 layers at 1024
            px; at 512 px the absolute rule takes 70 layers (32² and 16²), the relative one 60.
        cal_max_queries: the absolute rule's query limit.
        cal_max_side_fraction: the relative rule's side fraction (32 of 128 in SDXL at 1024).
        box_far_edge: where a training box's right/bottom edge lies on the latent-grid mask:
            ``inclusive`` (at the last inside cell, as DreamRelation's released mask2bbox) or
            ``exclusive`` (one cell past it, the pixel-edge convention of the readers).
        crop_p, crop_scale: DreamRelation's random resize-crop; num_crops: crops drawn per item
            once at setup (their VAE posteriors are cached); crop_seed: their seed.
        negative_prompt: generation's negative prompt.
        default_box_y: vertical extent of the default side-by-side layout used without boxes.
        num_sample_prompts: dataset items rendered in the sample grid.
        export_kohya: also write the LoRA in kohya format.
        relation_name: the relation the exported files are named after
            (``relationbooth-<relation_name>-lora.safetensors``); None: the predicate every item
            shares (``hugging``), else ``relation``.
    """

    name: str = "relationbooth"
    # DreamRelation train.sh / train.py recipe
    lr: float = 1e-4
    weight_decay: float = 1e-4
    max_grad_norm: Optional[float] = 1.0
    max_steps: int = 500
    batch_size: int = 1
    grad_accum: int = 4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    checkpoint_every: int = 500
    timestep_sampler: str = "uniform"
    resolution: Optional[int] = None

    # LoRA (peft)
    rank: int = 4
    lora_alpha: float = 4.0
    lora_init: str = "gaussian"
    lora_targets: list[str] = field(
        default_factory=lambda: ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"])
    lora_seed: int = 0

    # image-prompt branch (MS-Diffusion)
    image_encoder: Optional[str] = None
    clipself_checkpoint: Optional[str] = None
    ms_adapter: Optional[str] = None
    branch_seed: int = 0
    scale: float = 0.6
    num_dummy_tokens: int = 4
    tokens_per_entity: int = 16
    resampler_dim: int = 1280
    resampler_depth: int = 4
    resampler_dim_head: int = 64
    resampler_heads: int = 20
    resampler_ff_mult: int = 4
    fourier_freqs: int = 8
    fourier_temperature: float = 100.0
    mask_bias: float = -10000.0
    reference_resize: int = 512
    clip_mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    clip_std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    local_grid: int = 4
    local_image_size: Optional[int] = None
    local_tokens_train: bool = False
    local_tokens_inference: Optional[bool] = None  # None: only with a CLIPSelf checkpoint (released)
    tiny: TinyBranchConfig = field(default_factory=TinyBranchConfig)

    # losses
    kp_weight: float = 0.1
    kp_max_timestep: Optional[int] = 333
    calibration: Optional[bool] = None  # None: on when every item has a predicate
    cal_weight: float = 0.001
    cal_layer_rule: str = "absolute"  # DreamRelation train.py: layers with <= 32 x 32 queries
    cal_max_queries: int = 1024
    cal_max_side_fraction: float = 0.25

    # data
    box_far_edge: str = "inclusive"  # DreamRelation mask2bbox: the last index, not one past it
    crop_p: float = 0.5
    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    num_crops: int = 4
    crop_seed: int = 0

    # generation and export
    negative_prompt: str = RELEASED_NEGATIVE_PROMPT
    default_box_y: list[float] = field(default_factory=lambda: [0.2, 0.8])
    num_sample_prompts: int = 1
    export_kohya: bool = False
    relation_name: Optional[str] = None  # None: the items' shared predicate


# the method registers its own schema, as a plugin's ``schemas`` entry does
register_method_schema(RelationBoothConfig)
