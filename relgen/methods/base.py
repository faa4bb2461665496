"""The Method interface: what a plugin implements so the one training loop can run it.

A method is constructed on a loaded backbone, prepares its data (caching latents and frozen
encoder outputs once), exposes its trainable parameters, computes one micro-batch loss, and
exports an artifact that :class:`Artifact` applies to a diffusers pipeline.

The loop owns everything else: devices, precision, accumulation, clipping, LR schedule,
checkpoints, logging and sample grids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch

from relgen.card import generation_kwargs, load_run_line, program
from relgen.config import MethodConfig


@dataclass
class StepOutput:
    """A micro-batch loss and the scalars to log with it."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class StepContext:
    """What the loop hands to a training step, with the shared pieces every step is built from.

    A method draws its noise with :meth:`draw_noise` and computes each denoising term with
    :meth:`denoising_loss`; the loop-wide options (``trainer.noise_offset``,
    ``trainer.input_perturbation``, ``trainer.snr_gamma``) then reach it with no code of its
    own. Constructed with only a generator and a sampler, every option is off.

    Attributes:
        generator: the run's training generator (noise, timesteps, data draws); its state is
            checkpointed, so resumed runs draw exactly what an uninterrupted run would.
        sample_timesteps: the configured timestep sampler, ``(n, generator) -> LongTensor[n]``.
        step: the optimizer step being accumulated (0-based).
        micro_step: the micro-batch index within that step.
        noise_offset: ``trainer.noise_offset`` (0: off).
        input_perturbation: ``trainer.input_perturbation`` (0: off).
        weighting: ``t -> (B,)`` per-sample loss weights (min-SNR-γ), or None (off).
    """

    generator: torch.Generator
    sample_timesteps: Any
    step: int = 0
    micro_step: int = 0
    noise_offset: float = 0.0
    input_perturbation: float = 0.0
    weighting: Optional[Any] = None

    def draw_noise(self, latents: torch.Tensor):
        """The micro-batch's noise (:class:`relgen.train.noise.NoiseDraw`): ``.noise`` builds
        the target, ``.input`` is added to the latents."""
        from relgen.train.noise import draw_noise

        return draw_noise(latents, self.generator, self.noise_offset, self.input_perturbation)

    def denoising_loss(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A scalar denoising term: the MSE, per-sample weighted when loss weighting is on."""
        from relgen.train.losses import denoising_loss

        return denoising_loss(pred, target, t, self.weighting)


class Artifact:
    """A trained artifact that can be applied to a diffusers pipeline.

    ``relgen.load(run_dir)`` returns one. ``apply(pipe)`` installs what the method trained
    (token rows, LoRA, graph network); ``pipeline_inputs`` turns prompts into the pipeline's
    keyword arguments (plain strings by default, prompt embeddings for methods that edit them).
    """

    method: str = ""

    def apply(self, pipe) -> None:
        raise NotImplementedError

    def pipeline_inputs(self, pipe, prompts: list[str], **options) -> dict:
        return {"prompt": prompts}

    def sample_prompts(self) -> list[str]:
        return []


class Method:
    """Base class of method plugins (see the module docstring).

    Class attributes:
        name: the registry name.
        dataset_formats: dataset kinds the method reads ("reversion", "rrnet",
            "dreamrelation"); checked before any weights load.
        requires: fields the dataset must provide (e.g. {"keypoints"}).
        families: backbone families it supports.
        denoising_terms: the logged terms that are denoising MSEs computed with
            ``ctx.denoising_loss`` (``"loss"`` when the whole loss is one); loss weighting
            (``trainer.snr_gamma``) applies to these and to no other term.
    """

    name: ClassVar[str] = ""
    dataset_formats: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[frozenset[str]] = frozenset()
    families: ClassVar[frozenset[str]] = frozenset({"sd", "sdxl"})
    denoising_terms: ClassVar[tuple[str, ...]] = ("loss",)

    def __init__(self, cfg: MethodConfig, backbone, data) -> None:
        self.cfg = cfg
        self.backbone = backbone
        self.data = data

    # -- training ---------------------------------------------------------------------------
    def trainable_parameters(self) -> list[dict]:
        """Optimizer parameter groups (all fp32): exactly the tensors the method trains, which
        are also the tensors ``trainer.ema_decay`` averages."""
        raise NotImplementedError

    def next_batch(self, generator: torch.Generator) -> Any:
        """Draw the next micro-batch using only ``generator`` for randomness."""
        raise NotImplementedError

    def training_step(self, batch: Any, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called after every optimizer update (e.g. restore frozen token rows)."""

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: trained tensors plus any schedule position."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- artifacts --------------------------------------------------------------------------
    def export(self, out_dir: Path) -> dict[str, Path] | list[Path]:
        """Write the trained artifact in standard formats; return the files written.

        Return ``{role: path}`` (e.g. ``{"embeddings": out_dir / "reversion-R.safetensors"}``):
        ``relgen.json`` records each file's name under its role (``files``) and
        :meth:`load_artifact` finds it there with :func:`relgen.names.exported_file`. Name the
        files after what they hold with :func:`relgen.names.export_file_name`. A list of paths
        is recorded under the files' own names.
        """
        raise NotImplementedError

    @classmethod
    def load_artifact(cls, export_dir: Path, meta: dict) -> Artifact:
        """Read what :meth:`export` wrote (or an official checkpoint) for generation."""
        raise NotImplementedError

    @classmethod
    def card_usage(cls, meta: dict) -> tuple[str, list[str]]:
        """For the export's model card: how to load it in diffusers (markdown) and what it lacks.

        ``meta`` is the export's ``relgen.json`` plus what :mod:`relgen.card` reads (the base
        model, where the export is); write each way of loading it as one whole program with
        :func:`relgen.card.program`. The default shows ``relgen.load``.
        """
        prompt = (meta.get("method_config") or {}).get("sample_prompts") or ["a prompt"]
        body = [load_run_line(meta), "run.apply(pipe)",
                f"image = pipe(**run.pipeline_inputs(pipe, [{prompt[0]!r}]), {generation_kwargs(meta)}).images[0]"]
        return program(meta, body, imports=["import relgen"]), ["The backbone's own weights."]

    def live_artifact(self) -> Artifact:
        """An artifact bound to the in-training state, for sample grids during training."""
        raise NotImplementedError

    def sample_prompts(self) -> list[str]:
        return list(self.cfg.sample_prompts)


def check_capabilities(method_cls: type[Method], family: str, dataset_format: str,
                       provides: frozenset[str], method_name: str, backbone_name: str,
                       dataset_name: str) -> None:
    """Refuse incompatible combinations before any weights are loaded."""
    from relgen.errors import ConfigError

    if family not in method_cls.families:
        raise ConfigError(f"method {method_name} does not support backbone {backbone_name} "
                          f"(family {family}); supported families: {sorted(method_cls.families)}")
    if method_cls.dataset_formats and dataset_format not in method_cls.dataset_formats:
        raise ConfigError(f"method {method_name} reads {'/'.join(method_cls.dataset_formats)} datasets, "
                          f"but dataset {dataset_name} is a {dataset_format} dataset")
    missing = method_cls.requires - provides
    if missing:
        raise ConfigError(f"method {method_name} needs {sorted(missing)} from the dataset, which "
                          f"dataset {dataset_name} does not provide")


def optional_path(p: Optional[str]) -> Optional[Path]:
    return Path(p).expanduser() if p else None
