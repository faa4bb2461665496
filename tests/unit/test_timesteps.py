import math

import pytest
import torch

from relgen.errors import ConfigError
from relgen.train.timesteps import make_timestep_sampler, relation_focal_weights


def test_relation_focal_statistics_over_100k_draws():
    sample = make_timestep_sampler("relation_focal", 1000, alpha=0.5)
    t = sample(100_000, torch.Generator().manual_seed(0)).double()
    assert t.min() >= 0 and t.max() <= 999
    assert abs(t.mean().item() - 601) <= 3
    assert abs((t >= 500).double().mean().item() - 0.66) <= 0.01


def test_relation_focal_weights_match_formula():
    p = relation_focal_weights(1000, 0.5)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    # ReVersion Eq. 6: f(t) ∝ 1 − α·cos(πt/T); endpoints ≈ 0.5/1000 and 1.5/1000
    z = sum(1 - 0.5 * math.cos(math.pi * t / 1000) for t in range(1000))
    assert p[0].item() == pytest.approx(0.5 / z, rel=1e-12)
    assert p[999].item() == pytest.approx((1 - 0.5 * math.cos(math.pi * 999 / 1000)) / z, rel=1e-12)
    # exact mean of the discrete distribution, summed in plain Python
    mean = sum(t * (1 - 0.5 * math.cos(math.pi * t / 1000)) for t in range(1000)) / z
    assert (p * torch.arange(1000)).sum().item() == pytest.approx(mean, rel=1e-12)
    assert 600 < mean < 602


def test_alpha_zero_is_uniform():
    p = relation_focal_weights(1000, 0.0)
    assert torch.all(p == p[0]) and p[0].item() == pytest.approx(1e-3)
    t = make_timestep_sampler("relation_focal", 1000, alpha=0.0)(100_000, torch.Generator().manual_seed(1)).double()
    assert abs(t.mean().item() - 499.5) <= 3
    assert abs((t >= 500).double().mean().item() - 0.5) <= 0.01


def test_uniform_sampler_and_determinism():
    s = make_timestep_sampler("uniform", 1000)
    a = s(64, torch.Generator().manual_seed(3))
    b = s(64, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.int64


def test_bad_sampler_config():
    with pytest.raises(ConfigError, match="timestep_sampler"):
        make_timestep_sampler("cosine", 1000)
    with pytest.raises(ConfigError, match="focal_alpha"):
        relation_focal_weights(1000, 1.5)
