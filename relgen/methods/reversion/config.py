"""Config schema of the reversion method (light: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from relgen.methods.textual_inversion.config import TextualInversionConfig


@dataclass
class ReVersionConfig(TextualInversionConfig):
    name: str = "reversion"
