"""Config schema of the rrnet method (light: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from relgen.config import MethodConfig


@dataclass
class RRNetConfig(MethodConfig):
    name: str = "rrnet"
