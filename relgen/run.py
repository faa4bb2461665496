"""One training run: check, load, train, export, sample, summarise.

The order matters for users: everything that can be checked without weights (config, data,
method/dataset/backbone capabilities) is checked first, so a typo costs seconds, not the
minutes it takes to load SDXL. ``dry_run=true`` stops after those checks.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from relgen.errors import ConfigError
from relgen.export import export_run  # noqa: F401  (also imported from here)

log = logging.getLogger("relgen")


def run_training(cfg: DictConfig, run_dir: str) -> int:
    from relgen.data.registry import open_dataset
    from relgen.methods.base import check_capabilities
    from relgen.registry import get_backbone, get_method
    from relgen.validation import validate

    run_dir = Path(run_dir)
    validate(cfg)  # every value a user can get wrong, before anything loads or is written
    method_cls = get_method(cfg.method.name)
    dataset = open_dataset(cfg.dataset, cfg.cache_dir)
    check_capabilities(method_cls, cfg.backbone.family, dataset.format, dataset.provides,
                       cfg.method.name, cfg.backbone.name, cfg.dataset.name)
    data = dataset.load()  # reads and validates every file now
    check_data = getattr(method_cls, "check_data", None)
    if check_data is not None:  # optional hook: method checks that need the data, not weights
        check_data(cfg.method, data)
    if cfg.dry_run:
        print(f"relgen: dry run ok: method={cfg.method.name} backbone={cfg.backbone.name} "
              f"dataset={cfg.dataset.name} ({dataset.describe(data)}); no weights were loaded")
        return 0

    import torch
    from accelerate import Accelerator

    from relgen.train.loop import Trainer, write_json

    from accelerate.utils import ProjectConfiguration

    # trackers of trainer.report_to; TensorBoard writes under <run>/tensorboard
    acc = Accelerator(mixed_precision=cfg.trainer.mixed_precision, cpu=cfg.trainer.cpu,
                      log_with=list(cfg.trainer.report_to) or None,
                      project_config=ProjectConfiguration(project_dir=str(run_dir),
                                                          logging_dir=str(run_dir / "tensorboard")))
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(cfg.seed)
    what = f"tiny random weights ({cfg.backbone.tiny})" if cfg.backbone.tiny else cfg.backbone.pretrained
    log.info("relgen: loading backbone %s from %s (%s)", cfg.backbone.name, what, cfg.backbone.dtype)
    backbone = get_backbone(cfg.backbone.name)(cfg.backbone, cfg.cache_dir, acc.device)
    if cfg.trainer.gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    method = method_cls(cfg.method, backbone, data)
    trainer = Trainer(cfg, run_dir, acc, backbone, method)
    if cfg.resume:
        trainer.resume(cfg.resume)
    elif acc.is_main_process and (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        raise ConfigError(f"{run_dir}: already holds checkpoints; pass resume=latest to continue it "
                          "or choose a new hydra.run.dir")
    result = trainer.train()
    if not acc.is_main_process:
        return 0

    with trainer.averaged_weights():  # the EMA of the trained tensors when trainer.ema_decay is on
        export_dir = export_run(cfg, run_dir, method, step=trainer.step)
    samples = None
    if cfg.trainer.sample_at_end:
        samples = trainer.sample_grid("final")
    trainer.finish()
    summary = {
        "method": cfg.method.name, "backbone": cfg.backbone.name, "dataset": cfg.dataset.name,
        "steps": trainer.step, "final": result["final_logs"], "train_seconds": round(result["seconds"], 2),
        "num_processes": acc.num_processes, "lr": trainer.lr, "device": str(acc.device),
        "run_dir": str(run_dir), "export": str(export_dir),
        "samples": str(samples) if samples else None,
        "checkpoints": str(run_dir / "checkpoints"), "metrics": str(run_dir / "metrics.csv"),
    }
    write_json(run_dir / "summary.json", summary)
    print(f"relgen: trained {cfg.method.name} on {cfg.backbone.name} for {trainer.step} steps")
    for key in ("run_dir", "export", "samples", "checkpoints", "metrics"):
        if summary[key]:
            print(f"  {key:12s} {summary[key]}")
    return 0
