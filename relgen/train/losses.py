"""The denoising loss every method shares, with the loop-wide loss weighting.

A method computes each of its denoising terms with :func:`denoising_loss` (through
``StepContext.denoising_loss``): the MSE of each sample between the model's output and the
backbone's target, weighted per sample by its timestep when ``trainer.snr_gamma`` is set, then
averaged over the batch. Terms that are not denoising MSEs (ReVersion's steering loss,
RelationBooth's keypoint and calibration losses) do not go through it and are never weighted.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

#: ``t -> (B,)`` per-sample loss weights.
Weighting = Callable[[torch.Tensor], torch.Tensor]


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``ᾱ_t / (1 − ᾱ_t)`` of timesteps ``t`` (Kingma et al. 2021, Eq. 1).

    It is 0 at the last timestep of a zero-terminal-SNR schedule (Lin et al. 2024).
    """
    a = alphas_cumprod.to(device=t.device, dtype=torch.float64)[t]
    return (a / (1.0 - a)).float()


def min_snr_weights(snr_t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample weights of min-SNR-γ weighting (Hang et al. 2023, Eq. 9).

    For an epsilon target the weight of the MSE is ``min(SNR, γ) / SNR``; for a v target it is
    ``min(SNR, γ) / (SNR + 1)``, as diffusers' train_text_to_image.py computes it. The epsilon
    weight is written ``γ / max(SNR, γ)``, the same value that stays finite (1) where SNR = 0,
    the last timestep of a zero-terminal-SNR schedule; the v weight is 0 there.

    Args:
        snr_t: ``(B,)`` SNR of each sample's timestep.
        gamma: γ > 0 (the paper uses 5).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.

    Returns:
        ``(B,)`` float32 weights.
    """
    snr_t = snr_t.float()
    if prediction_type == "epsilon":
        return gamma / torch.clamp(snr_t, min=gamma)
    if prediction_type == "v_prediction":
        return torch.clamp(snr_t, max=gamma) / (snr_t + 1.0)
    raise ValueError(f"min-SNR weighting supports epsilon and v_prediction targets, not '{prediction_type}'")


def make_weighting(snr_gamma: Optional[float], alphas_cumprod: torch.Tensor,
                   prediction_type: str) -> Optional[Weighting]:
    """The loss weighting of a run, or None when it is off (``trainer.snr_gamma=null``)."""
    if snr_gamma is None:
        return None
    alphas_cumprod = alphas_cumprod.detach().cpu()

    def weighting(t: torch.Tensor) -> torch.Tensor:
        return min_snr_weights(snr(alphas_cumprod, t.cpu()), snr_gamma, prediction_type).to(t.device)

    return weighting


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean squared error of each sample, in float32."""
    err = F.mse_loss(pred.float(), target.float(), reduction="none")
    return err.mean(dim=list(range(1, err.dim())))


def denoising_loss(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
                   weighting: Optional[Weighting] = None) -> torch.Tensor:
    """The scalar denoising loss of a micro-batch.

    Without weighting it is the plain MSE over every element (exactly ``F.mse_loss``, as the
    released code of every built-in method computes it). With weighting, each sample's MSE is
    multiplied by its timestep's weight and the batch is averaged (as diffusers'
    train_text_to_image.py with ``--snr_gamma``).

    Args:
        pred: ``(B, ...)`` model output.
        target: the backbone's target of the same shape (epsilon or v).
        t: ``(B,)`` timesteps of the samples.
        weighting: ``t -> (B,)`` weights, or None.
    """
    if weighting is None:
        return F.mse_loss(pred.float(), target.float())
    return (per_sample_mse(pred, target) * weighting(t).to(pred.device)).mean()
