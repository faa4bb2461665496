"""Config schema of the relationbooth method (light: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from relgen.config import MethodConfig


@dataclass
class RelationBoothConfig(MethodConfig):
    name: str = "relationbooth"
