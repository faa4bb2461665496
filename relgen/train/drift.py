"""What a resumed run may change: every config key is in exactly one of two lists.

Resuming compares the new run's resolved config with the one saved in the checkpoint:

* :data:`REFUSE` — a change that makes the saved state invalid or its meaning different (the
  method, backbone, data, the shape or initialisation of what is trained, the optimizer
  family, EMA on/off). The resume stops with one line listing every differing key.
* :data:`APPLY` — a change it is legitimate to continue with (steps, learning rate, loss
  weights, cadences, logging, generation defaults). It takes effect from the next step and
  is logged and written to ``summary.json``.

A key is classed by its own dotted name or by a dotted ancestor (``experiment``,
``method.tiny``). A key found in neither list is refused when it changes (the safe default);
``tests/unit/test_resume_drift.py`` enumerates every key of every built-in schema and fails
on one that is not classed, so a new key gets classed when it is added. Keys that exist only
in newer versions (or are added by an extension) may be listed before they exist: a listed
key absent from one of the two configs is not compared.

Free-form mappings (``method.optimizer_args``) are compared key by key: an entry added or
removed inside a mapping both configs hold (``+method.optimizer_args.amsgrad=true``) is a
change of that dotted key, classed by its ancestors like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Changes that invalidate the saved state: a resume that changes one is refused.
REFUSE: frozenset[str] = frozenset({
    "seed",
    # what the method trains on and how (a resumed state was made under the old rule)
    "method.box_far_edge", "method.cal_layer_rule", "method.cal_max_queries", "method.edit_rows",
    "method.image_resample",
    # the backbone: which weights, which structure, which target
    "backbone.name", "backbone.family", "backbone.pretrained", "backbone.revision", "backbone.variant",
    "backbone.single_file_config", "backbone.architecture", "backbone.tiny", "backbone.tiny_seed",
    "backbone.prediction_type",
    "backbone.resolution",
    # the data
    "dataset.name", "dataset.root", "dataset.seed", "dataset.size", "dataset.relations",
    "dataset.num_images", "dataset.num_items", "dataset.resolution", "dataset.identity",
    # what is trained, its shape and initialisation
    "method.name", "method.resolution", "method.placeholder_token", "method.initializer_token",
    "method.relation", "method.hidden_size", "method.num_heads", "method.eot_self_loops",
    "method.object_template", "method.adjust_pooled",
    "method.rank", "method.lora_alpha", "method.lora_init", "method.lora_seed", "method.lora_targets",
    "method.image_encoder", "method.clipself_checkpoint", "method.ms_adapter", "method.branch_seed",
    "method.scale", "method.num_dummy_tokens", "method.tokens_per_entity", "method.resampler_dim",
    "method.resampler_depth", "method.resampler_dim_head", "method.resampler_heads",
    "method.resampler_ff_mult", "method.fourier_freqs", "method.fourier_temperature", "method.mask_bias",
    "method.reference_resize", "method.clip_mean", "method.clip_std", "method.local_grid",
    "method.local_image_size", "method.local_tokens_train", "method.tiny",
    # training crops are drawn once, at setup, from these
    "method.crop_p", "method.crop_scale", "method.num_crops", "method.crop_seed",
    # the optimizer's state only fits the optimizer that wrote it
    "method.optimizer", "method.optimizer_args",
})

#: Refused only when switched on or off (``None``/0 ↔ a value); a new value is applied.
REFUSE_WHEN_TOGGLED: frozenset[str] = frozenset({"trainer.ema_decay"})

#: Applied keys that differ on every resume by nature; not logged.
SILENT: frozenset[str] = frozenset({"resume", "dry_run"})

#: Changes a resumed run applies from its next step (and logs).
APPLY: frozenset[str] = frozenset({
    "output_root", "cache_dir", "resume", "dry_run", "experiment", "method.export_every",
    # generation defaults
    "backbone.dtype", "backbone.vae_dtype", "backbone.inference_scheduler", "backbone.inference_steps",
    "backbone.guidance_scale",
    # the recipe: steps, rates, optimizer hyper-parameters (new base rates, the schedule's step kept)
    "method.lr", "method.scale_lr", "method.weight_decay", "method.adam_beta1", "method.adam_beta2",
    "method.adam_epsilon", "method.batch_size", "method.grad_accum", "method.max_steps",
    "method.lr_scheduler", "method.lr_warmup_steps", "method.max_grad_norm", "method.checkpoint_every",
    "method.timestep_sampler", "method.focal_alpha",
    # loss weights and their schedules
    "method.denoise_loss_weight", "method.steer_loss_weight", "method.num_positives", "method.temperature",
    "method.train_scale", "method.noise_weight", "method.pos_weight", "method.neg_weight", "method.neg_clamp",
    "method.kp_weight", "method.kp_max_timestep", "method.calibration", "method.cal_weight",
    "method.cal_max_side_fraction",
    # sampling and generation
    "method.sample_prompts", "method.sample_seed", "method.sample_steps", "method.sample_guidance",
    "method.num_sample_prompts", "method.lowercase_prompts", "method.inference_scale", "method.grid_scales",
    "method.negative_prompt", "method.default_box_y", "method.local_tokens_inference", "method.export_kohya",
    "method.relation_name",  # only the exported files' names
    # where and how things run
    "method.cache_text", "method.gnn_device",
    "trainer.mixed_precision", "trainer.cpu", "trainer.max_steps", "trainer.checkpoint_every",
    "trainer.keep_checkpoints", "trainer.sample_every", "trainer.sample_at_end", "trainer.num_samples",
    "trainer.log_every", "trainer.tensorboard", "trainer.progress", "trainer.gradient_checkpointing",
    "trainer.cache_latents", "trainer.status_every", "trainer.num_threads",
    # loop-wide loss options
    "trainer.snr_gamma", "trainer.noise_offset", "trainer.input_perturbation", "trainer.report_to",
    "trainer.max_abs_weight",
    # the validation loss and the objective (read-only passes over fixed batches)
    "trainer.validate_every", "trainer.val_batches", "trainer.val_seed", "trainer.objective",
})


@dataclass
class Drift:
    """The differences between a checkpoint's config and the resuming run's.

    Attributes:
        refused: dotted keys whose change is refused (listed in :data:`REFUSE`, toggled
            :data:`REFUSE_WHEN_TOGGLED` keys, or not classed at all).
        applied: dotted key → (checkpoint's value, new value) for the changes applied.
        unclassed: the refused keys that are in neither list.
    """

    refused: list[str] = field(default_factory=list)
    applied: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    unclassed: list[str] = field(default_factory=list)


def classify(key: str) -> str:
    """``"refuse"``, ``"toggle"``, ``"apply"`` or ``"unclassed"`` for a dotted key."""
    parts = key.split(".")
    for depth in range(len(parts), 0, -1):
        name = ".".join(parts[:depth])
        if name in REFUSE:
            return "refuse"
        if name in REFUSE_WHEN_TOGGLED:
            return "toggle"
        if name in APPLY:
            return "apply"
    return "unclassed"


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of a config (lists are leaves), resolved."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, Any] = {}
    for key, value in (cfg or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _mappings(cfg: Any, prefix: str = "") -> set[str]:
    """Dotted names of every mapping in a config below its top-level groups (empty ones included)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    out: set[str] = set()
    for key, value in (cfg or {}).items():
        if isinstance(value, dict):
            name = f"{prefix}{key}"
            if prefix:  # method.optimizer_args, not method itself (a newer version's keys land there)
                out.add(name)
            out |= _mappings(value, name + ".")
    return out


def _one_sided(key: str, shared_maps: set[str]) -> bool:
    """Whether a key only one config holds is an entry added to or removed from a mapping both hold."""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    return parent in shared_maps


def _off(value: Any) -> bool:
    return value is None or value == 0 or value is False


def compare(saved: Any, new: Any) -> Drift:
    """Class every difference between the checkpoint's config ``saved`` and the new one."""
    old_keys, new_keys = flatten(saved), flatten(new)
    shared_maps = _mappings(saved) & _mappings(new)
    # an empty mapping is a leaf of flatten(); its entries on the other side are compared one by one
    for keys, other in ((old_keys, new_keys), (new_keys, old_keys)):
        for name in [k for k, v in keys.items() if v == {} and k in shared_maps]:
            if any(o.startswith(name + ".") for o in other):
                del keys[name]
    compared = old_keys.keys() & new_keys.keys()
    compared |= {k for k in old_keys.keys() ^ new_keys.keys() if _one_sided(k, shared_maps)}
    drift = Drift()
    for key in sorted(compared):
        before, after = old_keys.get(key), new_keys.get(key)  # None: not in that config
        if before == after or key in SILENT:
            continue
        kind = classify(key)
        if kind == "apply" or (kind == "toggle" and _off(before) == _off(after)):
            drift.applied[key] = (before, after)
        else:
            drift.refused.append(key)
            if kind == "unclassed":
                drift.unclassed.append(key)
    return drift


__all__ = ["APPLY", "REFUSE", "REFUSE_WHEN_TOGGLED", "SILENT", "Drift", "classify", "compare", "flatten"]
