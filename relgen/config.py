"""Typed schemas for every Hydra config group.

Each YAML option starts with ``defaults: [/schema/<group>/<schema>@_here_, _self_]``, so a
wrong type (``method.lr=abc``) or an unknown key (``method.lrr=1``) fails when Hydra composes
the config, before anything is loaded. Method-specific schemas extend :class:`MethodConfig`
and are registered by the package that owns them with :func:`register_schema`: each built-in
method's ``config`` module registers its own schema when imported (as a plugin's ``schemas``
entry does), and :func:`relgen.registry.register_builtin_schemas` imports them before Hydra
composes. This module imports no method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from relgen.registry import register_builtin_schemas, register_schema
from relgen.rundir import job_name, run_name


@dataclass
class BackboneConfig:
    """Where a Stable Diffusion backbone comes from and how it runs.

    Attributes:
        name: registry name (``sd15``, ``sd21_base``, ``sd21``, ``sdxl``, ``tiny_*``).
        family: ``sd`` (one CLIP text encoder: SD 1.x / 2.x) or ``sdxl`` (two encoders).
        pretrained: a hub id, a local diffusers folder, or a single ``.safetensors`` file.
        single_file_config: for a single file, a local diffusers folder holding the model's
            configs, instead of the published ones shipped with relgen (for fine-tunes whose
            architecture differs from the published model's).
        architecture: ``sd1`` | ``sd2`` | ``sdxl``: what a single checkpoint file must be (read
            from its keys; another architecture is refused); ``None`` checks only the family.
        tiny: build seeded random weights of this structure ("sd15", "sd21", "sdxl") instead.
        resolution: native training and generation resolution in pixels.
        prediction_type: what the checkpoint predicts; checked against its scheduler config.
        dtype: weight dtype of the frozen modules (trainable parameters always stay fp32).
        vae_dtype: VAE dtype (SDXL's VAE produces NaNs in fp16: keep float32 there).
        inference_scheduler: the scheduler generation uses by default.
    """

    name: str = MISSING
    family: str = "sd"
    pretrained: Optional[str] = None
    revision: Optional[str] = None
    variant: Optional[str] = None
    single_file_config: Optional[str] = None
    architecture: Optional[str] = None
    tiny: Optional[str] = None  # "sd15" | "sd21" | "sdxl": build random weights of that structure
    tiny_seed: int = 0
    resolution: int = 512
    prediction_type: str = "epsilon"
    dtype: str = "float32"
    vae_dtype: str = "float32"
    inference_scheduler: str = "pndm"
    inference_steps: int = 50
    guidance_scale: float = 7.5


@dataclass
class DatasetConfig:
    """A dataset option. ``root`` points at the official layout for the ``*_folder`` readers;
    the synthetic ``shapes_*`` generators write the same layout under the cache folder."""

    name: str = MISSING
    root: Optional[str] = None
    resolution: Optional[int] = None  # None: the backbone's native resolution
    seed: int = 0
    size: int = 64  # synthetic image size in pixels
    relations: list[str] = field(default_factory=list)  # synthetic: "A R B" triples or words
    num_images: int = 6  # relworld_reversion: exemplars; relworld_rrnet: 2 x images per folder
    num_items: int = 4
    # relworld_dreamrelation: the identity, a textured one's name (e.g. checkered_blue_square) or a
    # plain "<colour> <shape>" named by its class (e.g. "cyan cross"); None: the world's first
    identity: Optional[str] = None


@dataclass
class MethodConfig:
    """The fields every method shares: its training recipe.

    Defaults follow the released code of each method; paper values are ``experiment`` presets.
    """

    name: str = MISSING
    optimizer: str = "adamw"  # "adamw" | "adamw8bit" (CUDA) | "prodigy" | "adafactor" | "sgd"
    optimizer_args: dict[str, Any] = field(default_factory=dict)  # more constructor arguments
    lr: float = 1e-4
    scale_lr: bool = False  # lr *= batch_size * grad_accum * num_processes (diffusers' --scale_lr)
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    batch_size: int = 1
    grad_accum: int = 1
    max_steps: int = 100
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: Optional[float] = None
    checkpoint_every: int = 500
    export_every: Optional[int] = None  # also write export/step-NNNNNN/ every N steps (kept)
    timestep_sampler: str = "uniform"  # or "relation_focal" (ReVersion Eq. 6)
    focal_alpha: float = 0.5
    sample_prompts: list[str] = field(default_factory=list)
    sample_seed: int = 0
    sample_steps: Optional[int] = None  # None: the backbone's inference default
    sample_guidance: Optional[float] = None


@dataclass
class TrainerConfig:
    """Engineering settings of the one training loop (not part of a method's recipe)."""

    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (trainable parameters stay fp32)
    cpu: bool = False  # force the CPU even when an accelerator is present
    # CPU threads torch uses (torch.set_num_threads); None (null): torch's choice, every core. On a
    # machine shared with other jobs, a share of the cores avoids oversubscription.
    num_threads: Optional[int] = None
    max_steps: Optional[int] = None  # overrides method.max_steps (e.g. trainer=debug)
    checkpoint_every: Optional[int] = None  # overrides method.checkpoint_every
    keep_checkpoints: int = 2
    # a labelled grid samples/step-NNNNNN.png every N steps (diffusers' --validation_steps), so the best
    # step can be picked; None (null): only the final grid
    sample_every: Optional[int] = 250
    sample_at_end: bool = True
    num_samples: int = 2  # images per sample prompt in the grid
    log_every: int = 1
    # a "step N/M · loss · lr · s/step · time left" line in the log (and train.log) every N steps;
    # None (null): about 20 lines per run
    status_every: Optional[int] = None
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # accelerate trackers; [] for none
    tensorboard: Optional[bool] = None  # replaced by report_to; set only to get the migration message
    progress: bool = True
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    # Loop-wide training options; each is off by default, so every method runs its released recipe.
    snr_gamma: Optional[float] = None  # min-SNR-γ loss weighting (Hang et al. 2023; 5 in the paper)
    noise_offset: float = 0.0  # as diffusers' --noise_offset (0.05-0.1 is usual)
    input_perturbation: float = 0.0  # as diffusers' --input_perturbation (0.1 in the paper)
    ema_decay: Optional[float] = None  # EMA of the trained tensors (diffusers' EMAModel), e.g. 0.999
    # A trained tensor with an entry of larger magnitude has blown up (a learning rate far too high): the
    # run stops naming the last good checkpoint. Trained token rows, graph weights and LoRA entries sit
    # orders of magnitude below; float16 overflows at 65504. null: only NaN/inf stop a run.
    max_abs_weight: Optional[float] = 1.0e4
    # The validation loss: the method's own-image denoising term on val_batches fixed micro-batches
    # (data, noise and timesteps drawn from val_seed alone, so every run of a sweep sees the same),
    # on the EMA weights when trainer.ema_decay is on; every validate_every steps and at the end.
    validate_every: Optional[int] = None  # None: only at the end
    val_batches: int = 4
    val_seed: int = 1234
    # What the run reports to a sweeper (summary.json "objective", the task function's return value):
    # "val_loss" (minimised), or "<metric>[.<output>]" of relgen.evaluate scored on the final export
    # (e.g. clip_t, detector_relation.relation_accuracy, relworld.relation_accuracy; FID minimised,
    # every other metric maximised), with objective_eval holding the evaluation's settings
    # (prompts, num_images, seeds, eval models: the keys of python -m relgen.evaluate).
    objective: str = "val_loss"
    objective_eval: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    backbone: BackboneConfig = MISSING
    dataset: DatasetConfig = MISSING
    method: MethodConfig = MISSING
    trainer: TrainerConfig = MISSING
    seed: int = 0
    output_root: str = "outputs"
    cache_dir: Optional[str] = None  # None: $RELGEN_CACHE or ~/.cache/relgen
    resume: Optional[str] = None  # "latest" or a checkpoint folder
    dry_run: bool = False
    experiment: Optional[Any] = None


_store = ConfigStore.instance()


def compose_run(*overrides: str):
    """The run config ``python -m relgen <overrides>`` composes (Hydra's compose API, no app)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_builtin_schemas()  # the built-in methods' schemas, as the command line registers them
    from hydra_plugins.relgen_sweeper import ensure_registered

    ensure_registered()  # hydra/sweeper=relgen_optuna, as the command line registers it
    return compose_config("config", *overrides)


def compose_config(config_name: str, *overrides: str):
    """The config ``config_name`` (a primary config of ``relgen.conf``: ``config``, ``generate``,
    ``import_official``, ``evaluate``) composed with ``overrides`` (Hydra's compose API, no app)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # e.g. inside a Hydra app
        return compose(config_name, overrides=list(overrides))
    with initialize_config_module(config_module="relgen.conf", version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def _run_name() -> str:
    return run_name()


# ``${relgen_run_name:}``: the default run folder name (cached: one name per composed config).
OmegaConf.register_new_resolver("relgen_run_name", _run_name, use_cache=True, replace=True)


def _job_name(sweep_dir, num, overrides) -> str:
    return job_name(sweep_dir, num, overrides)


# ``${relgen_job_name:<sweep dir>,<job num>,<job overrides>}``: a sweep job's folder name
OmegaConf.register_new_resolver("relgen_job_name", _job_name, replace=True)


register_schema("backbone", "backbone", BackboneConfig)
register_schema("dataset", "dataset", DatasetConfig)
register_schema("method", "base", MethodConfig)
register_schema("trainer", "trainer", TrainerConfig)
_store.store(name="run_schema", node=RunConfig)

