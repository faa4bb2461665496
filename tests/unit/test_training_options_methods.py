"""Every built-in method with every loop-wide option: one step each on the method's own tiny
family (every family behind ``slow``), and loss weighting on exactly the denoising terms each
method declares."""

import math

import pytest
import torch

from relgen.plugin import StepContext
from relgen.testing import compose
from relgen.train.losses import make_weighting, min_snr_weights, snr
from test_training_options import OPTIONS  # the same option matrix

#: method -> the tiny family of its paper's model structure
METHODS = {"textual_inversion": "tiny_sd15", "reversion": "tiny_sd15", "rrnet": "tiny_sd21",
           "relationbooth": "tiny_sdxl"}
#: method -> its synthetic dataset
DATASETS = {"textual_inversion": "shapes_reversion", "reversion": "shapes_reversion", "rrnet": "shapes_rrnet",
            "relationbooth": "shapes_dreamrelation"}
FAMILIES = ["tiny_sd15", "tiny_sd21", "tiny_sdxl"]
#: The total loss of each method from its (weighted) logged terms, as each method combines them.
TOTALS = {
    "textual_inversion": lambda logs, cfg: logs["loss"],
    "reversion": lambda logs, cfg: cfg.denoise_loss_weight * logs["loss_denoise"] + cfg.steer_loss_weight * logs["loss_steer"],
    "rrnet": lambda logs, cfg: cfg.pos_weight * logs["loss_pos"] - cfg.neg_weight * logs["loss_neg"],
    "relationbooth": lambda logs, cfg: logs["diff"] + cfg.kp_weight * logs["kml"] + cfg.cal_weight * logs.get("cal", 0.0),
}

_built = {}


def _args(method: str, family: str) -> list[str]:
    return [f"method={method}", f"backbone={family}", f"dataset={DATASETS[method]}", "trainer=debug",
            "method.grad_accum=1", "method.batch_size=1", "trainer.sample_at_end=false"]


def _build(method: str, family: str):
    """One method instance per (method, family) for this module (steps mutate only its parameters)."""
    key = (method, family)
    if key not in _built:
        from relgen.backbones.loading import load_backbone
        from relgen.data.registry import open_dataset
        from relgen.registry import get_method

        cfg = compose(*_args(method, family))
        backbone = load_backbone(cfg.backbone)
        _built[key] = get_method(method)(cfg.method, backbone, open_dataset(cfg.dataset).load())
    return _built[key]


@pytest.fixture(scope="module", autouse=True)
def _release():
    yield
    _built.clear()


def _matrix():
    for method, own in METHODS.items():
        for family in FAMILIES:
            marks = [] if family == own else [pytest.mark.slow]
            yield pytest.param(method, family, id=f"{method}-{family}", marks=marks)


def _step_with_options(tmp_path, method_name, family, options):
    from accelerate import Accelerator

    from relgen.train.loop import Trainer

    method = _build(method_name, family)
    before = [p.detach().clone() for g in method.trainable_parameters() for p in g["params"]]
    cfg = compose(*_args(method_name, family), *options)
    trainer = Trainer(cfg, tmp_path, Accelerator(cpu=True), method.backbone, method)
    logs = trainer.run_step()
    after = [p.detach() for p in trainer.params]
    return trainer, logs, before, after


@pytest.mark.parametrize("method_name,family", list(_matrix()))
def test_every_method_steps_with_every_option(tmp_path, method_name, family):
    for name, options in OPTIONS.items():
        trainer, logs, before, after = _step_with_options(tmp_path / name, method_name, family, options)
        assert math.isfinite(logs["loss"]), (name, logs)
        assert any(not torch.equal(b, a) for b, a in zip(before, after)), f"{name}: nothing was trained"
        if name == "ema":
            for shadow, p in zip(trainer.ema.shadow_params, after):  # the first update copies (s - (s - p))
                torch.testing.assert_close(shadow, p)


@pytest.mark.parametrize("method_name,family", list(_matrix()))
def test_min_snr_weighting_scales_exactly_the_declared_denoising_terms(method_name, family):
    method = _build(method_name, family)
    bb = method.backbone
    t_fixed = 50  # SNR > 5 on every tiny schedule, so the weight is below 1 for epsilon and v

    def step(weighting):
        gen = torch.Generator().manual_seed(11)
        batch = method.next_batch(gen)
        torch.manual_seed(0)
        ctx = StepContext(gen, lambda n, g: torch.full((n,), t_fixed, dtype=torch.long), weighting=weighting)
        with torch.no_grad():
            out = method.training_step(batch, ctx)
        return {"loss": out.loss.item(), **out.logs}

    state = method.state_dict()  # with RRNet's schedule position: both steps see the same pair
    plain = step(None)
    method.load_state_dict(state)
    weighted = step(make_weighting(5.0, bb.noise_scheduler.alphas_cumprod, bb.prediction_type))
    w = min_snr_weights(snr(bb.noise_scheduler.alphas_cumprod, torch.tensor([t_fixed])), 5.0,
                        bb.prediction_type).item()
    a = bb.noise_scheduler.alphas_cumprod[t_fixed].double().item()
    s = a / (1 - a)
    assert w == pytest.approx(min(s, 5) / (s if bb.prediction_type == "epsilon" else s + 1), rel=1e-6)
    assert w < 0.9

    terms = set(type(method).denoising_terms)
    assert terms <= set(plain), (terms, sorted(plain))
    for key in plain:
        if key in terms:
            assert weighted[key] == pytest.approx(w * plain[key], rel=1e-5), key
        elif key != "loss":
            assert weighted[key] == pytest.approx(plain[key], rel=1e-6, abs=1e-9), key  # not weighted
    # the optimised loss is the method's combination of the weighted denoising terms and the others
    assert weighted["loss"] == pytest.approx(TOTALS[method_name](weighted, method.cfg), rel=1e-5, abs=1e-7)
