"""Hints for the habits users bring to relgen's command line.

relgen takes Hydra overrides (``key=value``), not ``--flags``; a user coming from diffusers'
or kohya's training scripts types ``--max_train_steps=20``, and a placeholder such as ``<cat>``
needs quoting twice (for the shell, then for Hydra's override grammar, where ``<`` and ``>``
are not allowed in a bare value). After the command line is refused, :func:`command_line_hints`
says what to type instead.
"""

from __future__ import annotations

from typing import Sequence

#: diffusers' (examples/*/train_*.py) and kohya sd-scripts' training flags -> the relgen key.
#: A value of None: the flag has no relgen key; the text says what to do instead.
FLAG_KEYS: dict[str, str] = {
    "max_train_steps": "trainer.max_steps",
    "learning_rate": "method.lr",
    "scale_lr": "method.scale_lr",
    "train_batch_size": "method.batch_size",
    "gradient_accumulation_steps": "method.grad_accum",
    "lr_scheduler": "method.lr_scheduler",
    "lr_warmup_steps": "method.lr_warmup_steps",
    "max_grad_norm": "method.max_grad_norm",
    "adam_beta1": "method.adam_beta1",
    "adam_beta2": "method.adam_beta2",
    "adam_weight_decay": "method.weight_decay",
    "adam_epsilon": "method.adam_epsilon",
    "optimizer_type": "method.optimizer",  # kohya
    "checkpointing_steps": "trainer.checkpoint_every",
    "save_every_n_steps": "trainer.checkpoint_every",  # kohya
    "checkpoints_total_limit": "trainer.keep_checkpoints",
    "save_last_n_steps": "trainer.keep_checkpoints",  # kohya (a count of checkpoints here)
    "validation_steps": "trainer.sample_every",
    "sample_every_n_steps": "trainer.sample_every",  # kohya
    "num_validation_images": "trainer.num_samples",
    "validation_prompt": "method.sample_prompts",
    "mixed_precision": "trainer.mixed_precision",
    "gradient_checkpointing": "trainer.gradient_checkpointing",
    "snr_gamma": "trainer.snr_gamma",
    "min_snr_gamma": "trainer.snr_gamma",  # kohya
    "noise_offset": "trainer.noise_offset",
    "input_perturbation": "trainer.input_perturbation",
    "report_to": "trainer.report_to",
    "log_with": "trainer.report_to",  # kohya
    "seed": "seed",
    "output_dir": "hydra.run.dir",
    "resume_from_checkpoint": "resume",
    "resume": "resume",  # kohya
    "pretrained_model_name_or_path": "backbone.pretrained",
    "revision": "backbone.revision",
    "variant": "backbone.variant",
    "resolution": "method.resolution",
    "train_data_dir": "dataset.root",
    "instance_data_dir": "dataset.root",
    "placeholder_token": "method.placeholder_token",
    "initializer_token": "method.initializer_token",
    "rank": "method.rank",
    "network_dim": "method.rank",  # kohya
    "network_alpha": "method.lora_alpha",  # kohya
}

#: Values to show for flags that are switches in the peers' scripts.
_SWITCH_VALUES = {"scale_lr": "true", "gradient_checkpointing": "true", "resume_from_checkpoint": "latest",
                  "resume": "latest"}

#: Flags Hydra's own command line takes (hydra/_internal/utils.py get_args_parser).
HYDRA_FLAGS = frozenset({"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--resolve", "--package", "-p",
                         "--run", "-r", "--multirun", "-m", "--shell-completion", "-sc", "--config-path", "-cp",
                         "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"})

#: Characters Hydra's override grammar does not take in a bare value.
_NEEDS_QUOTES = set("<>")


def flag_hint(arg: str, next_arg: str | None = None, flag_keys: dict[str, str] = FLAG_KEYS) -> str | None:
    """The relgen override for a diffusers/kohya ``--flag[=value]`` (``None`` for other arguments);
    ``flag_keys``: the flags this command maps (``{}``: say only that relgen takes no flags)."""
    if not arg.startswith("--") or arg.split("=", 1)[0] in HYDRA_FLAGS:
        return None
    name, sep, value = arg[2:].partition("=")
    name = name.replace("-", "_")
    if not sep and next_arg is not None and not next_arg.startswith("-") and "=" not in next_arg:
        value = next_arg  # "--max_train_steps 20"
    key = flag_keys.get(name)
    if key is None:
        return (f"{arg}: relgen takes key=value overrides, not --flags (--help lists the config groups; "
                "--cfg job shows every key)")
    value = value or _SWITCH_VALUES.get(name, "<value>")
    if key == "trainer.report_to" and not value.startswith("["):
        value = f"[{value}]"
    return f"{arg}: relgen takes key=value overrides; the diffusers/kohya flag --{name} is {key}={value}"


def quoting_hint(arg: str) -> str | None:
    """How to quote an override whose value holds ``<`` or ``>`` (a placeholder token like ``<cat>``)."""
    key, sep, value = arg.partition("=")
    if not sep or not (_NEEDS_QUOTES & set(value)) or value[:1] in ("'", '"'):
        return None
    return (f"{arg}: Hydra reads < and > only inside quotes; quote the value for Hydra and the whole "
            f"override for the shell: '{key}=\"{value}\"'")


def command_line_hints(argv: Sequence[str], flag_keys: dict[str, str] = FLAG_KEYS) -> list[str]:
    """One hint per argument of ``argv`` that looks like a peer's flag or needs quoting."""
    hints = []
    for i, arg in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        hint = flag_hint(arg, nxt, flag_keys) if arg.startswith("--") else quoting_hint(arg)
        if hint:
            hints.append(hint)
    return hints


__all__ = ["FLAG_KEYS", "HYDRA_FLAGS", "command_line_hints", "flag_hint", "quoting_hint"]
