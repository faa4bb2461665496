"""ReVersion's artifact: the ``<R>`` rows plus its prompt handling at generation."""

from __future__ import annotations

import re
from typing import Optional

import torch

from relgen.errors import ConfigError
from relgen.methods.reversion.config import ReVersionConfig
from relgen.methods.textual_inversion.method import TokenArtifact


def normalize_prompt(prompt: str, token: str) -> str:
    """Lower-case a prompt except the relation token, as ReVersion's released inference.py.

    The released script lower-cases the whole prompt and then restores ``<R>``; likewise every
    case variant of ``token`` (``<r>``) becomes ``token``, and a ``{}`` template slot is filled
    with it (``"Michael Jackson {} wall"`` -> ``"michael jackson <R> wall"``).

    Args:
        prompt: The user's prompt or template.
        token: The relation token, e.g. ``"<R>"``.

    Returns:
        The normalised prompt.
    """
    prompt = prompt.replace("{}", token)
    pieces = re.split(re.escape(token), prompt, flags=re.IGNORECASE)
    return token.join(piece.lower() for piece in pieces)


class ReVersionArtifact(TokenArtifact):
    """The ``<R>`` rows plus ReVersion's prompt handling at generation.

    ``pipeline_inputs`` fills ``{}`` with the token and, when ``lowercase_prompts`` is on (the
    default, as the released inference.py), lower-cases everything except the token.
    """

    def __init__(self, token: str, rows: dict[str, torch.Tensor], prompts: list[str], method: str = ReVersionConfig.name,
                 lowercase_prompts: bool = True) -> None:
        super().__init__(token, rows, prompts, method)
        self.lowercase_prompts = lowercase_prompts

    def prepare_prompt(self, prompt: str, lowercase: Optional[bool] = None) -> str:
        lowercase = self.lowercase_prompts if lowercase is None else lowercase
        if lowercase:
            return normalize_prompt(prompt, self.token)
        return prompt.replace("{}", self.token)

    def pipeline_inputs(self, pipe, prompts: list[str], **options) -> dict:
        """``{"prompt": [...]}``; option ``lowercase_prompts`` (bool) overrides the default."""
        lowercase = options.pop("lowercase_prompts", None)
        if options:
            raise ConfigError(f"reversion: unknown generation option(s) {sorted(options)}; "
                              "known: ['lowercase_prompts']")
        return {"prompt": [self.prepare_prompt(p, lowercase) for p in prompts]}
