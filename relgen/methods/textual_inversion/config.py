"""Config schema of the textual_inversion method (light: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from relgen.config import MethodConfig
from relgen.registry import register_method_schema


@dataclass
class TextualInversionConfig(MethodConfig):
    """Textual inversion on the same recipe as ReVersion's released code (its baseline)."""

    name: str = "textual_inversion"
    # on the command line quote it twice, for Hydra and the shell: 'method.placeholder_token="<cat>"'
    placeholder_token: str = "<R>"
    initializer_token: str = "and"
    lr: float = 2.5e-4
    scale_lr: bool = True
    batch_size: int = 2
    grad_accum: int = 4
    max_steps: int = 3000
    checkpoint_every: int = 500
    resolution: Optional[int] = None  # None: the backbone's native resolution
    num_sample_prompts: int = 2


# the method registers its own schema, as a plugin's ``schemas`` entry does
register_method_schema(TextualInversionConfig)
