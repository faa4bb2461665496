"""The loop-wide training options: optimizers, min-SNR-γ weighting, noise offset, input
perturbation, EMA and trackers. Each changes what it should and nothing else, resumes bit for
bit, and reaches every method (a plugin included) through the loop's shared pieces."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from relgen.errors import ConfigError
from relgen.plugin import Method, StepContext, StepOutput
from relgen.testing import compose
from relgen.train.losses import denoising_loss, make_weighting, min_snr_weights, snr
from relgen.train import checkpoint as ckpt
from relgen.train.noise import draw_noise

TI = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
      "method.batch_size=1", "method.grad_accum=1", "trainer.sample_at_end=false"]

#: Every option on, each in its own run of the matrix tests (adamw8bit needs CUDA: tests/gpu).
OPTIONS = {
    "prodigy": ["method.optimizer=prodigy", "method.lr=1.0"],
    "adafactor": ["method.optimizer=adafactor"],
    "sgd": ["method.optimizer=sgd", "+method.optimizer_args.momentum=0.9"],
    "snr_gamma": ["trainer.snr_gamma=5"],
    "noise_offset": ["trainer.noise_offset=0.1"],
    "input_perturbation": ["trainer.input_perturbation=0.1"],
    "ema": ["trainer.ema_decay=0.9"],
}


# ------------------------------------------------------------------------------------------
# min-SNR-γ weighting


def test_min_snr_weights_hand_computed_on_both_prediction_types():
    # ᾱ = 0.99, 0.8, 0.5, 0.1, 0 → SNR = ᾱ / (1 − ᾱ) = 99, 4, 1, 1/9, 0 (the last: zero terminal SNR)
    alphas_cumprod = torch.tensor([0.99, 0.8, 0.5, 0.1, 0.0], dtype=torch.float64)
    t = torch.arange(5)
    s = snr(alphas_cumprod, t)
    torch.testing.assert_close(s, torch.tensor([99.0, 4.0, 1.0, 1 / 9, 0.0]))
    # epsilon: min(SNR, 5) / SNR, = 1 where SNR <= 5 (also at SNR = 0, where the quotient is 0/0)
    torch.testing.assert_close(min_snr_weights(s, 5.0, "epsilon"), torch.tensor([5 / 99, 1.0, 1.0, 1.0, 1.0]))
    # v: min(SNR, 5) / (SNR + 1)
    torch.testing.assert_close(min_snr_weights(s, 5.0, "v_prediction"),
                               torch.tensor([5 / 100, 4 / 5, 1 / 2, (1 / 9) / (10 / 9), 0.0]))
    with pytest.raises(ValueError, match="epsilon and v_prediction"):
        min_snr_weights(s, 5.0, "sample")


def test_min_snr_weights_stay_finite_at_the_last_step_of_relworlds_zero_snr_schedule():
    from diffusers import DDPMScheduler

    weights = Path(__file__).resolve().parents[2] / "relgen" / "relworld" / "weights"
    sched = DDPMScheduler.from_pretrained(str(weights), subfolder="scheduler")
    T = sched.config.num_train_timesteps
    t = torch.tensor([0, T // 2, T - 1])
    s = snr(sched.alphas_cumprod, t)
    assert s[-1].item() == 0.0  # zero terminal SNR
    naive = torch.minimum(s, torch.full_like(s, 5.0)) / s  # min(SNR, γ) / SNR as printed
    assert math.isnan(naive[-1].item())
    eps = make_weighting(5.0, sched.alphas_cumprod, "epsilon")(t)
    v = make_weighting(5.0, sched.alphas_cumprod, "v_prediction")(t)
    assert torch.isfinite(eps).all() and torch.isfinite(v).all()
    assert eps[-1].item() == 1.0 and v[-1].item() == 0.0
    a = sched.alphas_cumprod[T // 2].double()
    mid = (a / (1 - a)).item()
    assert eps[1].item() == pytest.approx(min(mid, 5) / mid, rel=1e-6)
    assert v[1].item() == pytest.approx(min(mid, 5) / (mid + 1), rel=1e-6)
    assert eps[0].item() == pytest.approx(5 / snr(sched.alphas_cumprod, t[:1]).item(), rel=1e-6)


def test_denoising_loss_is_plain_mse_when_off_and_weighted_per_sample_when_on():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    t = torch.tensor([5, 7, 9])
    assert torch.equal(denoising_loss(pred, target, t), F.mse_loss(pred, target))  # bit for bit
    per_sample = [((pred[i] - target[i]) ** 2).mean().item() for i in range(3)]
    weights = {5: 0.5, 7: 2.0, 9: 0.0}
    got = denoising_loss(pred, target, t, lambda ts: torch.tensor([weights[int(x)] for x in ts]))
    assert got.item() == pytest.approx((0.5 * per_sample[0] + 2.0 * per_sample[1]) / 3, rel=1e-6)


# ------------------------------------------------------------------------------------------
# noise


def test_noise_options_off_draw_exactly_one_randn():
    latents = torch.zeros(2, 4, 8, 8)
    g, replay = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    drawn = draw_noise(latents, g)
    assert torch.equal(drawn.noise, torch.randn(2, 4, 8, 8, generator=replay)) and drawn.input is drawn.noise
    assert torch.equal(g.get_state(), replay.get_state())


def test_noise_offset_shifts_each_sample_and_channel_by_a_constant_and_nothing_else():
    latents = torch.zeros(2, 4, 8, 8)
    g, replay = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    drawn = draw_noise(latents, g, offset=0.1)
    base = torch.randn(2, 4, 8, 8, generator=replay)
    shift = torch.randn(2, 4, 1, 1, generator=replay)
    torch.testing.assert_close(drawn.noise, base + 0.1 * shift, rtol=0, atol=0)
    assert drawn.input is drawn.noise  # the target sees the same noise
    # the mean shift: a channel's spatial mean has variance 1/64 + 0.1² instead of 1/64
    many = draw_noise(torch.zeros(4096, 4, 8, 8), torch.Generator().manual_seed(0), offset=0.1).noise
    assert many.mean(dim=(2, 3)).std().item() == pytest.approx(math.sqrt(1 / 64 + 0.01), rel=0.03)
    plain = draw_noise(torch.zeros(4096, 4, 8, 8), torch.Generator().manual_seed(0)).noise
    assert plain.mean(dim=(2, 3)).std().item() == pytest.approx(1 / 8, rel=0.03)
    assert many.std().item() == pytest.approx(math.sqrt(1 + 0.01), rel=0.01)


def test_input_perturbation_changes_the_models_input_only():
    latents = torch.zeros(2, 4, 8, 8)
    g, replay = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    drawn = draw_noise(latents, g, input_perturbation=0.1)
    base = torch.randn(2, 4, 8, 8, generator=replay)
    extra = torch.randn(2, 4, 8, 8, generator=replay)
    assert torch.equal(drawn.noise, base)  # the target keeps ε
    assert torch.equal(drawn.input, base + 0.1 * extra)


# ------------------------------------------------------------------------------------------
# optimizers


def _param():
    return torch.nn.Parameter(torch.ones(3))


@pytest.mark.parametrize("name,cls_path,args", [
    ("adamw", "torch.optim.AdamW", {}),
    ("prodigy", "prodigyopt.Prodigy", {"d_coef": 2.0}),
    ("adafactor", "transformers.optimization.Adafactor", {}),
    ("sgd", "torch.optim.SGD", {"momentum": 0.9, "nesterov": True}),
])
def test_each_optimizer_is_the_library_class_with_the_recipe_arguments(name, cls_path, args):
    import importlib

    from relgen.train.optim import make_optimizer

    mcfg = compose("method=textual_inversion", f"method.optimizer={name}", "method.adam_beta1=0.8",
                   "method.weight_decay=0.03", *[f"+method.optimizer_args.{k}={v}" for k, v in args.items()]).method
    opt = make_optimizer([{"params": [_param()]}], 0.5, mcfg, torch.device("cpu"))
    module, cls = cls_path.rsplit(".", 1)
    assert type(opt) is getattr(importlib.import_module(module), cls)
    group = opt.param_groups[0]
    assert group["lr"] == 0.5 and group["weight_decay"] == 0.03
    if name in ("adamw", "prodigy"):
        assert tuple(group["betas"]) == (0.8, 0.999) and group["eps"] == 1e-8
    if name == "adafactor":  # a fixed lr that the LR scheduler drives
        assert group["relative_step"] is False and group["scale_parameter"] is False
    for k, v in args.items():
        assert group[k] == v


def test_bad_optimizer_values_fail_in_one_line_naming_the_key():
    from relgen.validation import validate

    cases = [
        (["method.optimizer=adamw8bit", "trainer.cpu=true"], r"method.optimizer=adamw8bit needs a CUDA device"),
        (["method.optimizer=lion"], r"method.optimizer='lion' is not known; accepted: adamw, adamw8bit, prodigy"),
        (["method.optimizer=sgd", "+method.optimizer_args.betas=[0.9,0.99]"],
         r"method.optimizer_args: \['betas'\] not accepted by method.optimizer=sgd; accepted: momentum"),
    ]
    for overrides, match in cases:
        with pytest.raises(ConfigError, match=match) as err:
            validate(compose(*TI, *overrides))
        assert "\n" not in str(err.value)


def test_adamw8bit_on_the_cpu_is_refused_by_the_loop_too():
    from relgen.train.optim import make_optimizer

    mcfg = compose("method=textual_inversion", "method.optimizer=adamw8bit").method
    with pytest.raises(ConfigError, match="needs a CUDA device .* this run is on cpu; use method.optimizer=adamw"):
        make_optimizer([{"params": [_param()]}], 1e-4, mcfg, torch.device("cpu"))


def test_bad_trainer_option_values_fail_in_one_line():
    from relgen.validation import validate

    cases = [
        (["trainer.tensorboard=false"], r"trainer.tensorboard was replaced by trainer.report_to: use "
                                        r"trainer.report_to=\[\]"),
        (["trainer.tensorboard=true"], r"use trainer.report_to=\[tensorboard\]"),
        (["trainer.report_to=[tensorbord]"], r"trainer.report_to: 'tensorbord' is not a tracker; accepted: .*wandb"),
        (["trainer.snr_gamma=0"], r"trainer.snr_gamma=0.0 must be > 0"),
        (["trainer.noise_offset=-0.1"], r"trainer.noise_offset=-0.1 must be >= 0"),
        (["trainer.ema_decay=1.0"], r"trainer.ema_decay=1.0 must be in \(0, 1\)"),
    ]
    for overrides, match in cases:
        with pytest.raises(ConfigError, match=match) as err:
            validate(compose(*TI, *overrides))
        assert "\n" not in str(err.value)
    warnings = validate(compose(*TI, "method.optimizer=prodigy"))
    assert any("method.lr near 1.0" in w for w in warnings)


# ------------------------------------------------------------------------------------------
# a plugin method with no option code of its own, on a stand-in backbone


class _ToyBackbone:
    """What the loop and a denoising step need from a backbone: a schedule and its target."""

    name = "toy"
    device = torch.device("cpu")

    def __init__(self, prediction_type: str = "epsilon") -> None:
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                             prediction_type=prediction_type)
        self.prediction_type = prediction_type
        self.num_train_timesteps = 1000

    def add_noise(self, latents, noise, t):
        return self.noise_scheduler.add_noise(latents, noise, t)

    def training_target(self, latents, noise, t):
        if self.prediction_type == "epsilon":
            return noise
        return self.noise_scheduler.get_velocity(latents, noise, t)


class ToyPlugin(Method):
    """A plugin's method: a per-channel scale as its 'denoiser', built only from the shared pieces."""

    name = "toy"

    def __init__(self, cfg, backbone, data=None) -> None:
        super().__init__(cfg, backbone, data)
        self.scale = torch.nn.Parameter(torch.full((4, 1, 1), 0.5))
        self.latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        self.seen = []

    def trainable_parameters(self):
        return [{"params": [self.scale]}]

    def next_batch(self, generator):
        return torch.randint(0, 3, (self.cfg.batch_size,), generator=generator)

    def training_step(self, batch, ctx):
        latents = self.latents[batch]
        noise = ctx.draw_noise(latents)
        t = ctx.sample_timesteps(latents.shape[0], ctx.generator)
        noisy = self.backbone.add_noise(latents, noise.input, t)
        pred = self.scale * noisy
        target = self.backbone.training_target(latents, noise.noise, t)
        self.seen.append({"noise": noise, "t": t, "pred": pred.detach(), "target": target})
        return StepOutput(ctx.denoising_loss(pred, target, t))

    def state_dict(self):
        return {"scale": self.scale.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.scale.copy_(state["scale"])


def _toy_trainer(run_dir, *overrides, prediction_type="epsilon"):
    from accelerate import Accelerator

    from relgen.train.loop import Trainer

    cfg = compose(*TI, "method.lr=0.01", "method.max_steps=4", "trainer.max_steps=null",
                  "trainer.checkpoint_every=2", "trainer.progress=false", *overrides)
    method = ToyPlugin(cfg.method, _ToyBackbone(prediction_type))
    return Trainer(cfg, run_dir, Accelerator(cpu=True), method.backbone, method), method


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_plugin_method_gets_every_option_without_code_of_its_own(tmp_path, prediction_type):
    plain, plain_method = _toy_trainer(tmp_path / "a", prediction_type=prediction_type)
    opts, opts_method = _toy_trainer(tmp_path / "b", "trainer.snr_gamma=5", "trainer.noise_offset=0.1",
                                     "trainer.input_perturbation=0.2", prediction_type=prediction_type)
    a, b = plain.run_step(), opts.run_step()
    sa, sb = plain_method.seen[0], opts_method.seen[0]
    # the noise: the offset's constant shift per channel, the perturbation on the input only;
    # replay the step's draws from the run's generator (seed 0): batch, ε, shift, extra
    g = torch.Generator().manual_seed(compose(*TI).seed)
    torch.randint(0, 3, (1,), generator=g)
    base = torch.randn(1, 4, 4, 4, generator=g)
    shift = torch.randn(1, 4, 1, 1, generator=g)
    extra = torch.randn(1, 4, 4, 4, generator=g)
    assert torch.equal(sa["noise"].noise, base) and sa["noise"].input is sa["noise"].noise
    assert torch.equal(sb["noise"].noise, base + 0.1 * shift)
    assert torch.equal(sb["noise"].input, base + 0.1 * shift + 0.2 * extra)
    # the weighting: min(SNR, 5) / SNR (epsilon) or / (SNR + 1) (v) of the sampled timestep
    ac = plain_method.backbone.noise_scheduler.alphas_cumprod[sb["t"]].double()
    s = (ac / (1 - ac)).item()
    w = min(s, 5) / (s if prediction_type == "epsilon" else s + 1)
    mse = ((sb["pred"] - sb["target"]) ** 2).mean().item()
    assert b["loss"] == pytest.approx(w * mse, rel=1e-5)
    assert a["loss"] == pytest.approx(((sa["pred"] - sa["target"]) ** 2).mean().item(), rel=1e-6)


def test_ema_update_on_two_steps_hand_computed(tmp_path):
    for decay, second in ((0.1, 0.1), (0.9, 2 / 11)):  # diffusers' warm-up: min(decay, (1 + n) / (10 + n))
        trainer, method = _toy_trainer(tmp_path / str(decay), "method.optimizer=sgd", f"trainer.ema_decay={decay}")
        ema = trainer.ema
        trainer.run_step()
        p1 = method.scale.detach().clone()
        assert torch.equal(ema.shadow_params[0], p1)  # the first update copies the weights
        trainer.run_step()
        p2 = method.scale.detach().clone()
        assert not torch.equal(p1, p2)
        torch.testing.assert_close(ema.shadow_params[0], second * p1 + (1 - second) * p2, rtol=0, atol=1e-7)
        # samples and export see the EMA; the training weights come back bit for bit
        with trainer.averaged_weights():
            assert torch.equal(method.scale.detach(), ema.shadow_params[0])
        assert torch.equal(method.scale.detach(), p2)


def test_ema_that_is_not_finite_stops_the_run(tmp_path):
    from relgen.errors import RelgenError

    trainer, method = _toy_trainer(tmp_path, "trainer.ema_decay=0.9")
    trainer.run_step()
    trainer.ema.shadow_params[0].fill_(float("inf"))
    with pytest.raises(RelgenError, match=r"step 2: the EMA of the trained tensors is not finite; stopping"):
        trainer.run_step()


@pytest.mark.parametrize("option", list(OPTIONS))
def test_resume_is_bitwise_with_each_option(tmp_path, option):
    """4 steps straight == 2 steps, checkpoint, a new process state, 2 steps (the toy plugin)."""
    straight, _ = _toy_trainer(tmp_path / "straight", *OPTIONS[option])
    for _ in range(4):
        straight.run_step()
    first, _ = _toy_trainer(tmp_path / "resumed", *OPTIONS[option])
    for _ in range(2):
        first.run_step()
    first.save()
    first.run_step()  # a step that is lost (the crash), and must be redone the same way
    resumed, method = _toy_trainer(tmp_path / "resumed", *OPTIONS[option])
    resumed.resume(ckpt.find_checkpoint(tmp_path / "resumed", "latest"))
    assert resumed.step == 2
    for _ in range(2):
        resumed.run_step()
    a, b = straight.state(), resumed.state()
    assert torch.equal(a["method_state"]["scale"], b["method_state"]["scale"])
    assert str(a["optimizer"]) == str(b["optimizer"])  # every state tensor and group value
    if option == "ema":
        assert torch.equal(a["ema"]["shadow_params"][0], b["ema"]["shadow_params"][0])
        assert a["ema"]["optimization_step"] == b["ema"]["optimization_step"] == 4


# ------------------------------------------------------------------------------------------
# full runs


def test_full_run_resumes_bitwise_with_every_option_on_and_exports_the_ema(tmp_path):
    import shutil

    from safetensors.torch import load_file

    from relgen.run import run_training
    from relgen.train import checkpoint as ckpt

    args = TI + ["method.max_steps=4", "trainer.max_steps=null", "trainer.checkpoint_every=2",
                 "method.optimizer=adafactor", "trainer.snr_gamma=5", "trainer.noise_offset=0.1",
                 "trainer.input_perturbation=0.1", "trainer.ema_decay=0.9"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_training(compose(*args), straight) == 0
    assert run_training(compose(*args), resumed) == 0
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    shutil.rmtree(resumed / "export")
    assert run_training(compose(*args, "resume=latest"), resumed) == 0
    a = load_file(str(straight / "export" / "textual_inversion-R.safetensors"))["<R>"]
    b = load_file(str(resumed / "export" / "textual_inversion-R.safetensors"))["<R>"]
    assert torch.equal(a, b)
    state = ckpt.load_checkpoint(straight / "checkpoints" / "step-000004")
    assert torch.equal(a, state["ema"]["shadow_params"][0][0])  # the export is the EMA
    assert not torch.equal(a, state["method_state"]["rows.text_encoder"][0])
    rows = (resumed / "metrics.csv").read_text()
    assert rows == (straight / "metrics.csv").read_text()


def test_trackers_get_scalars_and_sample_grids_tensorboard_and_wandb_offline(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from relgen.run import run_training

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    cfg = compose(*TI, "trainer.max_steps=1", "trainer.sample_at_end=true", "trainer.report_to=[tensorboard,wandb]")
    assert run_training(cfg, run_dir) == 0
    loss = float((run_dir / "metrics.csv").read_text().splitlines()[1].split(",")[1])
    grid = np.asarray(Image.open(run_dir / "samples" / "final.png").convert("RGB"))

    events = list((run_dir / "tensorboard" / "relgen").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0]), size_guidance={"images": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, pytest.approx(loss, rel=1e-6))]
    (image,) = acc.Images("samples")
    assert (image.step, image.height, image.width) == (1, *grid.shape[:2])

    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    record = next(wandb_run.glob("run-*.wandb")).read_bytes()
    assert b"loss" in record and repr(loss).encode() in record  # the scalar, as wandb stores it
    (media,) = (wandb_run / "files" / "media" / "images").glob("samples_1_*.png")
    assert np.array_equal(np.asarray(Image.open(media).convert("RGB")), grid)


def test_no_trackers_with_an_empty_report_to(tmp_path):
    from relgen.run import run_training

    assert run_training(compose(*TI, "trainer.max_steps=1", "trainer.report_to=[]"), tmp_path) == 0
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "wandb").exists()


def test_lowvram_preset_sets_bf16_compute_and_storage_and_the_command_line_still_wins():
    cfg = compose("trainer=lowvram", "backbone=sdxl")
    assert (cfg.trainer.mixed_precision, cfg.backbone.dtype, cfg.backbone.vae_dtype) == ("bf16", "bfloat16", "float32")
    assert cfg.trainer.gradient_checkpointing and cfg.trainer.cache_latents
    assert compose("trainer=lowvram", "backbone.dtype=float32").backbone.dtype == "float32"
    assert compose().backbone.dtype == "float32" and compose().trainer.mixed_precision == "no"
