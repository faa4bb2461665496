"""Timestep samplers shared by every method (selected by ``method.timestep_sampler``).

Both draw integer timesteps in [0, T) from a ``torch.Generator`` whose state the loop
checkpoints, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from relgen.errors import ConfigError

TimestepSampler = Callable[[int, torch.Generator], torch.Tensor]


def relation_focal_weights(num_timesteps: int, alpha: float) -> torch.Tensor:
    """Probabilities over t = 0..T-1 proportional to 1 − α·cos(πt/T) (ReVersion Eq. 6).

    As ReVersion's released train.py, the weights are evaluated at the integer timesteps and
    normalised into a discrete distribution; α = 0 gives the uniform distribution.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"method.focal_alpha must lie in [0, 1] (got {alpha})")
    t = torch.arange(num_timesteps, dtype=torch.float64)
    w = 1.0 - alpha * torch.cos(math.pi * t / num_timesteps)
    return w / w.sum()


def make_timestep_sampler(name: str, num_timesteps: int, alpha: float = 0.5) -> TimestepSampler:
    """``uniform`` or ``relation_focal`` (ReVersion's relation-focal importance sampling)."""
    if name == "uniform":
        def uniform(n: int, generator: torch.Generator) -> torch.Tensor:
            return torch.randint(0, num_timesteps, (n,), generator=generator, device=generator.device)
        return uniform
    if name == "relation_focal":
        probs = relation_focal_weights(num_timesteps, alpha)

        def focal(n: int, generator: torch.Generator) -> torch.Tensor:
            # a categorical draw with replacement, as np.random.choice(p=...) in the released code
            return torch.multinomial(probs.to(generator.device), n, replacement=True, generator=generator)
        return focal
    raise ConfigError(f"method.timestep_sampler '{name}' must be 'uniform' or 'relation_focal'")
