"""The one place where the training noise is drawn.

Every method gets its noise from :func:`draw_noise` (through ``StepContext.draw_noise``), so
the loop-wide noise options reach every method, plugins included, and every draw comes from
the run's checkpointed generator, so a resumed run draws exactly what an uninterrupted run
would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class NoiseDraw:
    """The noise of one micro-batch.

    Attributes:
        noise: ``ε`` with the same shape as the latents; the training target is built from it.
        input: the noise added to the latents to make the model's input. It is ``noise``
            itself unless input perturbation is on.
    """

    noise: torch.Tensor
    input: torch.Tensor


def draw_noise(latents: torch.Tensor, generator: Optional[torch.Generator], offset: float = 0.0,
               input_perturbation: float = 0.0) -> NoiseDraw:
    """Draw ``ε ~ N(0, I)`` shaped like ``latents`` from ``generator``, then apply the options.

    With both options off this is exactly one ``torch.randn(latents.shape, generator=generator)``.

    Args:
        latents: ``(B, C, ...)`` clean latents (only their shape and device are used).
        generator: the run's training generator (CPU).
        offset: noise offset: adds ``offset · N(0, 1)`` per sample and channel, constant over
            the spatial dimensions, to ``ε`` (Guttenberg 2023, as diffusers'
            train_text_to_image.py ``--noise_offset``).
        input_perturbation: adds ``input_perturbation · N(0, I)`` to the noise of the model's
            input only; the target keeps the unperturbed ``ε`` (Ning et al. 2023, as diffusers'
            train_text_to_image.py ``--input_perturbation``).

    Returns:
        The :class:`NoiseDraw`, on the latents' device.
    """
    noise = torch.randn(latents.shape, generator=generator)
    if offset:
        # as diffusers' train_text_to_image.py: noise += offset * randn(B, C, 1, 1)
        shape = (latents.shape[0], latents.shape[1]) + (1,) * (latents.dim() - 2)
        noise = noise + offset * torch.randn(shape, generator=generator)
    noise = noise.to(latents.device)
    if not input_perturbation:
        return NoiseDraw(noise, noise)
    # as diffusers' train_text_to_image.py: new_noise = noise + input_perturbation * randn_like(noise)
    extra = torch.randn(latents.shape, generator=generator).to(latents.device)
    return NoiseDraw(noise, noise + input_perturbation * extra)
