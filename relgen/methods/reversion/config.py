"""Config schema of the reversion method (light: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from relgen.methods.textual_inversion.config import TextualInversionConfig
from relgen.registry import register_method_schema


@dataclass
class ReVersionConfig(TextualInversionConfig):
    """ReVersion: the relation token ``<R>`` trained with a steering contrastive loss.

    The defaults are the recipe of the released README command (``train.py`` with
    ``--importance_sampling --steer_loss_weight 0.01 --num_positives 4 --temperature 0.07``,
    batch 2, accumulation 4, 3000 steps, lr 2.5e-4 with ``--scale_lr``, constant schedule).
    The recipe fields shared with textual inversion (token, initializer, lr, batch, steps,
    checkpoints) are inherited from :class:`TextualInversionConfig`.

    Attributes:
        denoise_loss_weight: weight of the denoising MSE (``--denoise_loss_weight``).
        steer_loss_weight: weight of the steering loss, ReVersion Eq. 5 (``--steer_loss_weight``);
            0 turns steering off (an ablation).
        num_positives: prepositions drawn without replacement per sample as positives
            (``--num_positives``).
        temperature: softmax temperature of the steering loss (``--temperature``).
        timestep_sampler: ``relation_focal`` (``--importance_sampling``, ReVersion Eq. 6) or
            ``uniform`` (an ablation).
        focal_alpha: alpha of the relation-focal weights (``--scaled_cosine_alpha``).
        lowercase_prompts: lower-case generation prompts except the relation token, as the
            released inference.py does.
    """

    name: str = "reversion"
    denoise_loss_weight: float = 1.0
    steer_loss_weight: float = 0.01
    num_positives: int = 4
    temperature: float = 0.07
    timestep_sampler: str = "relation_focal"
    focal_alpha: float = 0.5
    lowercase_prompts: bool = True


# the method registers its own schema, as a plugin's ``schemas`` entry does
register_method_schema(ReVersionConfig)
