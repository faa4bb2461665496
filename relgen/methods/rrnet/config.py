"""Config schema of the rrnet method (light: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from relgen.config import MethodConfig
from relgen.registry import register_method_schema


@dataclass
class RRNetConfig(MethodConfig):
    """RRNet (relation rectification) with the recipe of its released ``train.py``.

    One graph network is trained per relation folder. Each epoch draws one image from each of
    A, B, ARB and BRA and makes five optimizer steps, one per prompt pair, so the released
    100 epochs are 500 steps of one pair each.

    Attributes:
        relation: The relation folder to train on when the dataset holds several (its folder
            name, e.g. ``place``); ``None`` takes the first in sorted order. Sweep relations
            with ``-m method.relation=a,b``.
        hidden_size: Per-head width of the first graph-attention layer (``--hidden_size``).
        num_heads: Attention heads of both layers.
        eot_self_loops: Add the EOT self-loops that the released code has commented out
            (not the released behaviour; see ``relgen.methods.rrnet.graph``).
        object_template: The object sentence whose EOT output feeds the ``eot0`` node.
        train_scale: λ in ``e' = e + λ·delta`` during training.
        noise_weight: Scale of the Gaussian noise added to object-prompt deltas in training.
        pos_weight: Weight of the denoising loss on the matching image/prompt order.
        neg_weight: Weight of the (subtracted) loss on the swapped order.
        neg_clamp: If set, the negative term is ``min(L_neg, neg_clamp)``; the released code
            leaves it unbounded.
        edit_rows: ``eot`` (the released method: the delta goes to the first EOT row) or
            ``eot_and_padding`` (also every row after it; a generalisation for models whose
            first EOT row alone does not steer the layout, measured on relworld).
        adjust_pooled: SDXL only: also adjust the pooled embedding. Not implemented (the
            adjustment is defined on the EOT row of the conditioning sequence only); ``true``
            raises a ConfigError.
        inference_scale: Default λ at generation (the released demo's 0.6).
        grid_scales: Default λ columns of the scale grid (the released generate.py sweeps
            0 to 0.8; 1.0 is the training value).
        resolution: Training resolution; ``None``: the backbone's native one.
        image_resample: PIL filter of diffusers' ``VaeImageProcessor``, through which every
            exemplar image is resized (RRNet's released dataset.py calls its ``preprocess``;
            its default in the pinned diffusers 0.18.0 is ``lanczos``).
        cache_text: Also keep the frozen text-encoder outputs on disk (keyed by the backbone's
            identity and the prompts).
        gnn_device: Where the graph network runs; ``None``: the backbone's device when the
            installed DGL can place graphs there, else the CPU.
    """

    name: str = "rrnet"
    relation: Optional[str] = None
    # Optimiser and schedule: AdamW(lr 3e-4, weight decay 0.01), no schedule, no clipping,
    # one pair per step, 100 epochs x 5 pairs, as RRNet's released train.py.
    lr: float = 3e-4
    weight_decay: float = 0.01
    batch_size: int = 1
    grad_accum: int = 1
    max_steps: int = 500
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: Optional[float] = None
    checkpoint_every: int = 100
    # One timestep per pair from ReVersion's relation-focal distribution (alpha 0.5), as
    # RRNet's released train.py with importance sampling on.
    timestep_sampler: str = "relation_focal"
    focal_alpha: float = 0.5
    # Graph network (RGAT in RRNet's released GNN.py); widths come from the backbone.
    hidden_size: int = 512
    num_heads: int = 2
    eot_self_loops: bool = False
    object_template: str = "this is a photo of {}"
    # Adjustment and loss.
    train_scale: float = 1.0
    noise_weight: float = 0.05
    pos_weight: float = 10.0
    neg_weight: float = 2.0
    neg_clamp: Optional[float] = None
    edit_rows: str = "eot"
    adjust_pooled: bool = False
    # Generation (RRNet's released generate.py: PNDM, 30 steps, guidance 7.5).
    inference_scale: float = 0.6
    grid_scales: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    sample_steps: Optional[int] = 30
    sample_guidance: Optional[float] = 7.5
    # Exemplar images: VaeImageProcessor.preprocess(image, height, width) with its default
    # lanczos resize, as RRNet's released dataset.py on diffusers 0.18.0.
    image_resample: str = "lanczos"
    # Engineering.
    resolution: Optional[int] = None
    cache_text: bool = True
    gnn_device: Optional[str] = None


# the method registers its own schema, as a plugin's ``schemas`` entry does
register_method_schema(RRNetConfig)
