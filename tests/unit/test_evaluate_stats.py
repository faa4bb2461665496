"""relgen.evaluate.stats against hand-computed values."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from relgen.evaluate import stats


def test_wilson_matches_published_values():
    # Wilson (1927) score interval; 0/10 and 5/10 as tabulated by Newcombe (1998), method 3
    est = stats.wilson_rate([False] * 10)
    assert est.interval == "wilson" and est.value == 0.0
    assert est.low == 0.0 and est.high == pytest.approx(0.2775, abs=1e-4)
    est = stats.wilson_rate([True] * 5 + [False] * 5)
    assert (est.low, est.high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    # the same function as the relworld detector's
    from relgen.relworld.detector import wilson_interval

    assert stats.wilson_interval is wilson_interval


def test_cluster_bootstrap_distribution_is_the_exact_resampling_distribution():
    # 3 prompts of unequal size: the resample draws 3 prompts with replacement (27 equally
    # likely ordered draws); its statistic is the pooled mean over the drawn images.
    values = [1, 0, 1, 0, 1, 1]
    clusters = ["p1", "p1", "p1", "p2", "p3", "p3"]
    sums, counts = {"p1": 2, "p2": 0, "p3": 2}, {"p1": 3, "p2": 1, "p3": 2}
    exact = Counter()
    for draw in itertools.product(sums, repeat=3):
        exact[round(sum(sums[c] for c in draw) / sum(counts[c] for c in draw), 9)] += 1 / 27
    ids = stats._cluster_ids(clusters, len(values))
    s, n = stats._cluster_sums(np.asarray(values, float), ids)
    boots = stats._resample_means(s, n, 200_000, seed=0)
    freq = Counter(np.round(boots, 9).tolist())
    assert set(freq) == set(exact)
    for value, p in exact.items():
        assert freq[value] / boots.size == pytest.approx(p, abs=0.004)
    est = stats.cluster_bootstrap_rate([bool(v) for v in values], clusters, resamples=200_000)
    assert est.value == pytest.approx(4 / 6) and est.interval == "cluster_bootstrap"
    assert est.n == 6 and est.clusters == 3
    # the exact distribution's 2.5 % and 97.5 % points: 0 (p2 drawn 3 times, 1/27 = 3.7 %)
    # is above 2.5 %, so the lower end is 0; 1 (only p3, 1/27) likewise gives the upper end 1
    assert est.low == 0.0 and est.high == 1.0


def test_clustered_outcomes_widen_the_interval():
    # 2 prompts x 4 seeds, all seeds of a prompt agree: only 2 independent trials
    flags = [True] * 4 + [False] * 4
    clusters = ["a"] * 4 + ["b"] * 4
    est = stats.summarize(flags, clusters, binary=True)
    # resamples: aa (1/4) -> 1, ab/ba (1/2) -> 0.5, bb (1/4) -> 0
    assert est.interval == "cluster_bootstrap" and (est.low, est.high) == (0.0, 1.0)
    naive = stats.summarize(flags, None, binary=True)
    assert naive.interval == "wilson"
    assert naive.low == pytest.approx(0.2152, abs=1e-4) and naive.high == pytest.approx(0.7848, abs=1e-4)


def test_constant_scores_have_a_degenerate_interval_and_fixed_seed_is_reproducible():
    est = stats.cluster_bootstrap_mean([0.3] * 12, [i // 3 for i in range(12)])
    assert est.value == pytest.approx(0.3) and est.low == pytest.approx(0.3) and est.high == pytest.approx(0.3)
    rng = np.random.default_rng(5)
    x, c = rng.normal(size=40), np.repeat(np.arange(10), 4)
    first, second = stats.cluster_bootstrap_mean(x, c), stats.cluster_bootstrap_mean(x, c)
    assert (first.low, first.high) == (second.low, second.high)
    assert first.low < x.mean() < first.high


@pytest.mark.parametrize("only_method, only_baseline, p", [
    (6, 1, 16 / 128),   # 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 128
    (5, 0, 2 / 32),     # 2 * (1/2)^5
    (0, 5, 2 / 32),
    (3, 3, 1.0),
    (0, 0, 1.0),        # no discordant pair
    (10, 2, 2 * (1 + 12 + 66) / 4096),
])
def test_mcnemar_exact(only_method, only_baseline, p):
    both, neither = 7, 4  # concordant pairs do not enter the test
    method = [1] * only_method + [0] * only_baseline + [1] * both + [0] * neither
    baseline = [0] * only_method + [1] * only_baseline + [1] * both + [0] * neither
    assert stats.mcnemar_exact(method, baseline) == pytest.approx(p, rel=1e-12)


def test_paired_bootstrap_cancels_prompt_difficulty():
    # prompt difficulty varies a lot; the method is exactly 0.1 better on every image
    rng = np.random.default_rng(0)
    difficulty = np.repeat(rng.uniform(0, 1, size=8), 3)
    baseline, method = difficulty, difficulty + 0.1
    clusters = np.repeat(np.arange(8), 3)
    c = stats.paired_bootstrap_test(method, baseline, clusters, resamples=2000)
    assert c.effect == pytest.approx(0.1)
    assert c.low == pytest.approx(0.1) and c.high == pytest.approx(0.1)
    # no resampled difference is as far from the observed one as the observed one from 0
    assert c.p == pytest.approx(1 / 2001)
    unpaired = stats.cluster_bootstrap_mean(method, clusters)
    assert unpaired.high - unpaired.low > 0.2


def test_paired_bootstrap_null_and_interval():
    # per prompt differences +1 and -1 (2 prompts, one image each): effect 0, p = 1;
    # resampled mean differences: +1 (1/4), 0 (1/2), -1 (1/4) -> interval [-1, 1]
    c = stats.paired_bootstrap_test([1.0, 0.0], [0.0, 1.0], ["a", "b"])
    assert c.effect == 0.0 and c.p == 1.0 and (c.low, c.high) == (-1.0, 1.0)


def test_claim_for_rates_and_scores():
    # 4 prompts x 2 seeds; the method wins 3 discordant pairs, loses 1
    method = [1, 1, 1, 0, 1, 0, 0, 1]
    baseline = [0, 1, 0, 0, 1, 0, 1, 0]
    clusters = [0, 0, 1, 1, 2, 2, 3, 3]
    out = stats.claim("relation_accuracy", method, baseline, clusters)
    assert set(out) == {"metric", "method", "baseline", "effect", "ci95", "p"}
    assert out["metric"] == "relation_accuracy"
    assert out["method"] == 5 / 8 and out["baseline"] == 3 / 8 and out["effect"] == pytest.approx(2 / 8)
    assert out["p"] == pytest.approx(2 * (1 + 4) / 16)  # wins 3 of 4 discordant: 2 * P(X <= 1), Bin(4, 1/2)
    # per-prompt sums of differences: +1, +1, 0, 0 (2 images each); a resample of 4 prompts has
    # effect (number of +1 prompts drawn) / 8: 0 and 4/8 each have probability 1/16 > 2.5 %
    lo, hi = out["ci95"]
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.5) and lo <= out["effect"] <= hi
    scores = stats.claim("clip_t", [0.31, 0.30, 0.29, 0.33], [0.30, 0.30, 0.28, 0.31], [0, 0, 1, 1])
    assert scores["effect"] == pytest.approx(0.01)
    assert 0.0 < scores["p"] <= 1.0 and scores["ci95"][0] <= 0.01 <= scores["ci95"][1]


def test_mismatched_conditions_are_refused():
    with pytest.raises(ValueError, match="same prompts and seeds"):
        stats.claim("x", [1, 0], [1], None)
    with pytest.raises(ValueError, match="clusters"):
        stats.cluster_bootstrap_mean([1.0, 2.0], ["a"])

