"""The plugin contract: what a method implements so the core can train, import, check,
generate with and evaluate it without naming it.

A :class:`Method` is constructed on a loaded backbone, prepares its data (caching latents and
frozen encoder outputs once), exposes its trainable parameters, computes one micro-batch loss,
and exports an :class:`Artifact` that applies to a diffusers pipeline. Every hook the core calls
is a declared member below, with a no-op default where it is optional; the core never probes a
method with ``getattr`` or ``inspect``.

The loop owns everything else: devices, precision, accumulation, clipping, LR schedule,
checkpoints, logging and sample grids. Built-in methods live in :mod:`relgen.methods` and
register through the same ``relgen.plugins`` entry point as a third party's
(:mod:`relgen.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch

from relgen.card import generation_kwargs, load_run_line, program
from relgen.config import MethodConfig
from relgen.errors import ConfigError
from relgen.train.losses import denoising_loss
from relgen.train.noise import draw_noise


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
        return draw_noise(latents, self.generator, self.noise_offset, self.input_perturbation)

    def denoising_loss(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A scalar denoising term: the MSE, per-sample weighted when loss weighting is on."""
        return denoising_loss(pred, target, t, self.weighting)


@dataclass
class GridColumns:
    """Conditions rendered side by side, from :meth:`Artifact.grid_columns`.

    Attributes:
        kind: What the columns vary, used in the grid's file name (``"lambda"``).
        columns: One header per column (``"lambda = 0.6"``).
        folders: One folder name per column for the single images (``"lambda=0.6"``): the
            same name as the header.
        cells: ``cells[p][c]``: the images of prompt ``p`` under column ``c`` (image ``i``
            drawn with seed ``opts.seed + i``).
    """

    kind: str
    columns: list[str]
    folders: list[str]
    cells: list[list[list[Any]]]


@dataclass
class EvalCondition:
    """One condition an evaluation renders a run under (:meth:`Artifact.evaluation_conditions`).

    Attributes:
        name: The condition's name in the report (``"method"``, ``"lambda=0.6"``).
        options: Keyword options handed to :meth:`Artifact.pipeline_inputs` for every image.
        baseline: The condition is the run's own baseline (RRNet's λ = 0 is the base model),
            so no separate base-model condition is rendered for it.
    """

    name: str
    options: dict = field(default_factory=dict)
    baseline: bool = False


#: What :meth:`Method.import_official` returns: writes the export's files into a folder and
#: returns them by role, as :meth:`Method.export` does.
Exporter = Callable[[Path], "dict[str, Path] | list[Path]"]


class Artifact:
    """A trained artifact that can be applied to a diffusers pipeline.

    ``relgen.load(run_dir)`` returns one. ``apply(pipe)`` installs what the method trained
    (token rows, LoRA, graph network); ``pipeline_inputs`` turns prompts into the pipeline's
    keyword arguments (plain strings by default, prompt embeddings for methods that edit them).
    The other members are what generation and evaluation ask of it; each has a default.

    Attributes:
        method: The registry name of the method that made it.
        token: The placeholder word the artifact trained (ReVersion's ``<R>``), or ``None``.
            Prompt templates with ``{}`` take it; a method without one gets the relation
            written out.
        accepts_negative_prompt: ``pipeline_inputs`` takes ``negative_prompt=`` itself (a
            method that builds prompt embeddings); otherwise the core passes the negative
            prompt to the pipeline as a string.
    """

    method: str = ""
    token: Optional[str] = None
    accepts_negative_prompt: ClassVar[bool] = False

    def apply(self, pipe) -> None:
        """Install what the method trained into ``pipe`` (idempotent)."""
        raise NotImplementedError

    def pipeline_inputs(self, pipe, prompts: list[str], **options) -> dict:
        """The keyword arguments of ``pipe(...)`` for ``prompts``; ``options`` are the
        method's generation options (``method_options.*``, :meth:`prompt_options`)."""
        return {"prompt": prompts}

    def sample_prompts(self) -> list[str]:
        """Prompts rendered when the user gives none."""
        return []

    def check_options(self, options: dict) -> None:
        """Refuse generation options (``method_options.*``) this artifact does not take, before
        anything loads, with one line naming them (:class:`relgen.errors.ConfigError`). Default:
        every option is left to :meth:`pipeline_inputs`."""

    def grid_columns(self, pipe, prompts: list[str], opts, backbone_cfg,
                     progress: bool = False) -> Optional[GridColumns]:
        """Render ``prompts`` under several conditions, one grid column each (RRNet's λ sweep),
        or return ``None`` (the default) for the plain prompt x seed grid. ``opts`` is the
        :class:`relgen.generate.GenerationOptions` of the call."""
        return None

    def benchmark_prompts(self) -> dict[str, list[str]]:
        """The method's benchmark prompt templates by relation (``{}`` takes :attr:`token`),
        for ``python -m relgen.generate relation=<name>``; empty when it has none."""
        return {}

    def evaluation_conditions(self, eval_cfg) -> list[EvalCondition]:
        """The conditions ``python -m relgen.evaluate`` renders this run under; ``eval_cfg``
        is the evaluation's config (e.g. ``eval_cfg.lambdas``). Default: the run as trained."""
        return [EvalCondition("method")]

    def prompt_options(self, prompt, text: str) -> dict:
        """Generation options for one evaluation prompt (:class:`relgen.evaluate.samples.EvalPrompt`)
        rendered as ``text``, merged over the condition's options. Default: none."""
        return {}


class Method:
    """Base class of method plugins (see the module docstring).

    Class attributes:
        config_class: the method's config schema, a dataclass extending
            :class:`relgen.config.MethodConfig` whose ``name`` default is the registry name.
            :func:`relgen.registry.register_method` reads the name and the schema from it, so
            a method's name is written once.
        name: the registry name (set from ``config_class`` when not given).
        dataset_formats: dataset kinds the method reads ("reversion", "rrnet",
            "dreamrelation"); checked before any weights load.
        requires: fields the dataset must provide (e.g. {"keypoints"}).
        families: backbone families it supports.
        denoising_terms: the logged terms that are denoising MSEs computed with
            ``ctx.denoising_loss`` (``"loss"`` when the whole loss is one); loss weighting
            (``trainer.snr_gamma``) applies to these and to no other term.
        official_format: one line describing the official checkpoint
            :meth:`import_official` reads (``python -m relgen.import_official --help`` lists
            it); empty when the method has none.
        official_words: extra ``key=value`` options ``relgen.import_official`` accepts for
            this method (RRNet's relation words ``A``, ``R``, ``B``, ``ARB``, ``BRA``).
        own_prompt_set: a registered evaluation prompt set built from the run itself (RRNet's
            object-swapped pair ``rrnet_pairs``); ``relgen.evaluate`` uses it by default where
            the run's own relation is what is measured (runs on the relworld model).
    """

    config_class: ClassVar[type] = MethodConfig
    name: ClassVar[str] = ""
    dataset_formats: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[frozenset[str]] = frozenset()
    families: ClassVar[frozenset[str]] = frozenset({"sd", "sdxl"})
    denoising_terms: ClassVar[tuple[str, ...]] = ("loss",)
    official_format: ClassVar[str] = ""
    official_words: ClassVar[tuple[str, ...]] = ()
    own_prompt_set: ClassVar[Optional[str]] = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ and "config_class" in cls.__dict__:
            cls.name = getattr(cls.config_class, "name", "") or ""

    def __init__(self, cfg: MethodConfig, backbone, data) -> None:
        self.cfg = cfg
        self.backbone = backbone
        self.data = data

    # -- checks before anything loads -------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> list[str]:
        """Checks of the composed run config (``cfg.method``, ``cfg.backbone``...) that need no
        weights and no data; run by :func:`relgen.validation.validate` (and ``dry_run=true``).
        Raise :class:`relgen.errors.ConfigError` naming the key; return warning lines."""
        return []

    @classmethod
    def check_data(cls, cfg: MethodConfig, data: Any) -> None:
        """Checks that need the dataset but no weights (run before the backbone loads)."""

    # -- training ---------------------------------------------------------------------------
    def trainable_parameters(self) -> list[dict]:
        """Optimizer parameter groups (all fp32): exactly the tensors the method trains, which
        are also the tensors ``trainer.ema_decay`` averages."""
        raise NotImplementedError

    def next_batch(self, generator: torch.Generator) -> Any:
        """Draw the next micro-batch using only ``generator`` for randomness."""
        raise NotImplementedError

    def training_step(self, batch: Any, ctx: StepContext) -> StepOutput:
        """One micro-batch loss. Draw the noise with ``ctx.draw_noise`` and compute each
        denoising term with ``ctx.denoising_loss`` so the loop-wide options apply."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called after every optimizer update (e.g. restore frozen token rows)."""

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: trained tensors plus any schedule position."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
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
    def import_official(cls, cfg, file: Path, words: dict) -> Exporter:
        """Read an official checkpoint ``file`` for ``python -m relgen.import_official``.

        ``cfg`` is the composed run config (writable: record what the file names, e.g. the
        placeholder token); ``words`` are the :attr:`official_words` given. Check the file
        against the backbone with no weights loaded (:mod:`relgen.backbones.configs`), raise
        :class:`relgen.errors.RelgenError` naming the file, and return the function that
        writes the export's files into a folder, as :meth:`export` does.
        """
        raise ConfigError(f"method {cls.name} reads no official checkpoint")

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
        """Prompts of the sample grids during training."""
        return list(self.cfg.sample_prompts)


def check_capabilities(method_cls: type[Method], family: str, dataset_format: str,
                       provides: frozenset[str], method_name: str, backbone_name: str,
                       dataset_name: str) -> None:
    """Refuse incompatible combinations before any weights are loaded."""
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
