"""Statistics for generated-image benchmarks whose outcomes cluster by prompt.

Every benchmark here renders several seeds per prompt, and the conditions it compares (a method
and its baseline, RRNet at several λ) share prompts and seeds. Images of one prompt are not
independent trials, so:

* a rate or a mean score gets a **prompt-cluster bootstrap** interval: prompts are resampled
  with replacement and each resampled prompt brings all its seeds (the cluster bootstrap of
  Davison & Hinkley 1997, §3.8; the percentile interval of Efron & Tibshirani 1993, §13.3);
* Wilson's score interval is kept for the case it fits: independent binary outcomes (one image
  per prompt);
* the difference between two conditions is bootstrapped **paired**: one resampling of prompts
  applies to both conditions, so the shared prompt difficulty cancels;
* paired binary outcomes are tested with **McNemar's exact test** (the two-sided binomial test
  on the discordant pairs; McNemar 1947, exact form as in Fagerland et al. 2013), paired scores
  with a **paired bootstrap test** (the null-centred bootstrap of Efron & Tibshirani 1993,
  ch. 16, resampling prompts).

All bootstraps use a fixed RNG seed, so a report is reproducible to the digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Optional, Sequence

import numpy as np

#: Bootstrap resamples used unless a caller asks for another number.
DEFAULT_RESAMPLES = 10_000
#: Seed of every bootstrap RNG unless a caller gives another.
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95 % (or other) interval.

    Attributes:
        value: The rate or mean over all images.
        low: Lower end of the interval.
        high: Upper end.
        n: Number of images.
        clusters: Number of distinct prompts (clusters).
        interval: How the interval was made: ``"wilson"``, ``"cluster_bootstrap"`` or ``"none"``
            (no data).
    """

    value: float
    low: float
    high: float
    n: int
    clusters: int
    interval: str

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.low, self.high], "n": self.n,
                "clusters": self.clusters, "interval": self.interval}


@dataclass(frozen=True)
class Comparison:
    """A paired difference ``method - baseline`` with its interval and test.

    Attributes:
        method: Method's rate or mean.
        baseline: Baseline's rate or mean.
        effect: ``method - baseline``.
        low: Lower end of the paired cluster-bootstrap interval of ``effect``.
        high: Upper end.
        p: Two-sided p-value of the paired test.
        test: ``"mcnemar_exact"`` (binary outcomes) or ``"paired_bootstrap"`` (scores).
        n: Number of pairs.
        clusters: Number of distinct prompts.
    """

    method: float
    baseline: float
    effect: float
    low: float
    high: float
    p: float
    test: str
    n: int
    clusters: int


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; z = 1.96 for 95 %).

    ``centre = (p + z^2 / 2n) / (1 + z^2 / n)``, ``half = z sqrt(p (1 - p) / n + z^2 / 4n^2) /
    (1 + z^2 / n)``.
    """
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _as_array(values: Sequence[Any], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _cluster_ids(clusters: Optional[Sequence[Hashable]], n: int) -> np.ndarray:
    """Integer id per element; ``None`` makes every element its own cluster."""
    if clusters is None:
        return np.arange(n)
    clusters = list(clusters)
    if len(clusters) != n:
        raise ValueError(f"clusters: {len(clusters)} labels for {n} values")
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(c, len(index)) for c in clusters], dtype=np.int64)


def _cluster_sums(values: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sum of ``values`` and count of elements."""
    k = int(ids.max()) + 1 if ids.size else 0
    return np.bincount(ids, weights=values, minlength=k), np.bincount(ids, minlength=k).astype(np.float64)


def _resample_means(sums: np.ndarray, counts: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Pooled mean of each bootstrap resample of clusters (drawn with replacement).

    A resample's statistic is the mean over all its images (the estimator applied to the
    resampled data), so clusters weigh by their size as they do in the point estimate.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, sums.size, size=(resamples, sums.size))
    return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)


def _percentile_interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    # percentile interval (Efron & Tibshirani 1993, §13.3), numpy's linear interpolation
    alpha = 1.0 - level
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------
# one condition
# --------------------------------------------------------------------------------------------


def cluster_bootstrap_mean(values: Sequence[float], clusters: Optional[Sequence[Hashable]] = None,
                           level: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                           seed: int = DEFAULT_SEED) -> Estimate:
    """Mean of per-image scores with a prompt-cluster bootstrap percentile interval.

    Args:
        values: One score per image.
        clusters: The prompt (any hashable label) of each image; ``None``: images independent.
        level: Coverage of the interval.
        resamples: Number of bootstrap resamples.
        seed: RNG seed.
    """
    arr = _as_array(values, "values")
    if arr.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0, "none")
    ids = _cluster_ids(clusters, arr.size)
    sums, counts = _cluster_sums(arr, ids)
    low, high = _percentile_interval(_resample_means(sums, counts, resamples, seed), level)
    return Estimate(float(arr.mean()), low, high, int(arr.size), int(sums.size), "cluster_bootstrap")


def cluster_bootstrap_rate(flags: Sequence[bool], clusters: Optional[Sequence[Hashable]] = None,
                           level: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                           seed: int = DEFAULT_SEED) -> Estimate:
    """Share of successes with a prompt-cluster bootstrap percentile interval."""
    return cluster_bootstrap_mean([float(bool(f)) for f in flags], clusters, level, resamples, seed)


def wilson_rate(flags: Sequence[bool], level: float = 0.95) -> Estimate:
    """Share of successes with Wilson's score interval (independent outcomes only)."""
    from scipy.stats import norm

    k, n = int(sum(bool(f) for f in flags)), len(flags)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0, "none")
    low, high = wilson_interval(k, n, z=float(norm.ppf(0.5 + level / 2)))
    return Estimate(k / n, low, high, n, n, "wilson")


def summarize(values: Sequence[float], clusters: Optional[Sequence[Hashable]] = None, binary: bool = False,
              level: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Estimate:
    """The interval that fits the design: Wilson for independent binary outcomes (every prompt
    has one image), a prompt-cluster bootstrap otherwise."""
    n = len(values)
    ids = _cluster_ids(clusters, n)
    independent = n == 0 or len(set(ids.tolist())) == n
    if binary and independent:
        return wilson_rate([bool(v) for v in values], level)
    return cluster_bootstrap_mean(values, clusters, level, resamples, seed)


# --------------------------------------------------------------------------------------------
# two conditions on the same prompts and seeds
# --------------------------------------------------------------------------------------------


def _paired(method: Sequence[float], baseline: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(method, "method"), _as_array(baseline, "baseline")
    if a.size != b.size:
        raise ValueError(f"paired comparison: {a.size} method outcomes but {b.size} baseline outcomes; "
                         "both conditions must be scored on the same prompts and seeds")
    if a.size == 0:
        raise ValueError("paired comparison: no outcomes")
    return a, b


def paired_cluster_bootstrap(method: Sequence[float], baseline: Sequence[float],
                             clusters: Optional[Sequence[Hashable]] = None, level: float = 0.95,
                             resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
                             ) -> tuple[float, float, float, np.ndarray]:
    """Difference of means ``method - baseline`` with a paired prompt-cluster bootstrap interval.

    Element ``i`` of both sequences is the same prompt and seed. Each resample draws prompts with
    replacement and takes both conditions' images of the drawn prompts.

    Returns:
        ``(effect, low, high, resampled_effects)``.
    """
    a, b = _paired(method, baseline)
    ids = _cluster_ids(clusters, a.size)
    sums, counts = _cluster_sums(a - b, ids)
    boots = _resample_means(sums, counts, resamples, seed)
    low, high = _percentile_interval(boots, level)
    return float(a.mean() - b.mean()), low, high, boots


def mcnemar_exact(method: Sequence[bool], baseline: Sequence[bool]) -> float:
    """Two-sided p-value of McNemar's exact test for paired binary outcomes.

    Under the null the discordant pairs (method right and baseline wrong, or the reverse) split
    50/50, so the count of one kind is Binomial(n_discordant, 1/2) (McNemar 1947; the exact
    form, scipy's two-sided ``binomtest``). No discordant pair gives ``p = 1``.
    """
    from scipy.stats import binomtest

    a, b = _paired([float(bool(x)) for x in method], [float(bool(x)) for x in baseline])
    only_method = int(np.sum((a == 1) & (b == 0)))
    only_baseline = int(np.sum((a == 0) & (b == 1)))
    n = only_method + only_baseline
    if n == 0:
        return 1.0
    return float(binomtest(only_method, n, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap_test(method: Sequence[float], baseline: Sequence[float],
                          clusters: Optional[Sequence[Hashable]] = None, level: float = 0.95,
                          resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Comparison:
    """Paired comparison of scores: cluster-bootstrap interval of the mean difference and a
    two-sided bootstrap p-value.

    The p-value is the share of resampled differences, centred on the observed one, at least
    as far from zero as the observed difference (the null-centred bootstrap test, Efron &
    Tibshirani 1993, ch. 16), with the ``(count + 1) / (resamples + 1)`` convention of Davison &
    Hinkley 1997, ch. 4.
    """
    a, b = _paired(method, baseline)
    effect, low, high, boots = paired_cluster_bootstrap(a, b, clusters, level, resamples, seed)
    extreme = int(np.sum(np.abs(boots - effect) >= abs(effect) - 1e-12))
    p = min(1.0, (extreme + 1) / (resamples + 1))
    ids = _cluster_ids(clusters, a.size)
    return Comparison(float(a.mean()), float(b.mean()), effect, low, high, p, "paired_bootstrap",
                      int(a.size), int(ids.max()) + 1)


def compare(method: Sequence[float], baseline: Sequence[float], clusters: Optional[Sequence[Hashable]] = None,
            binary: Optional[bool] = None, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_SEED) -> Comparison:
    """Paired comparison of two conditions on the same prompts and seeds.

    Binary outcomes (detected from the values when ``binary`` is ``None``) get McNemar's exact
    test, scores the paired bootstrap test; both get the paired cluster-bootstrap interval of
    the difference.
    """
    a, b = _paired(method, baseline)
    if binary is None:
        binary = bool(np.all(np.isin(a, (0.0, 1.0))) and np.all(np.isin(b, (0.0, 1.0))))
    if not binary:
        return paired_bootstrap_test(a, b, clusters, level, resamples, seed)
    effect, low, high, _ = paired_cluster_bootstrap(a, b, clusters, level, resamples, seed)
    ids = _cluster_ids(clusters, a.size)
    return Comparison(float(a.mean()), float(b.mean()), effect, low, high, mcnemar_exact(a, b),
                      "mcnemar_exact", int(a.size), int(ids.max()) + 1)


def claim(metric: str, method_flags: Sequence[float], baseline_flags: Sequence[float],
          clusters: Optional[Sequence[Hashable]] = None, binary: Optional[bool] = None,
          resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """One entry of a results file's ``claims`` object.

    Args:
        metric: What is compared (e.g. ``"strict_relation_accuracy"``).
        method_flags: Per-image outcomes of the method (bools for rates, floats for scores).
        baseline_flags: The baseline's outcomes on the same prompts and seeds, in the same order.
        clusters: The prompt of each pair.
        binary: Force the rate (McNemar) or score (paired bootstrap) reading.

    Returns:
        ``{"metric", "method", "baseline", "effect", "ci95": [lo, hi], "p"}``: rates in [0, 1],
        ``ci95`` the paired cluster-bootstrap 95 % interval of ``effect = method - baseline``,
        ``p`` the paired test's two-sided p-value.
    """
    c = compare(method_flags, baseline_flags, clusters, binary=binary, level=0.95, resamples=resamples, seed=seed)
    return {"metric": metric, "method": c.method, "baseline": c.baseline, "effect": c.effect,
            "ci95": [c.low, c.high], "p": c.p}


__all__ = [
    "Comparison",
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "Estimate",
    "claim",
    "cluster_bootstrap_mean",
    "cluster_bootstrap_rate",
    "compare",
    "mcnemar_exact",
    "paired_bootstrap_test",
    "paired_cluster_bootstrap",
    "summarize",
    "wilson_interval",
    "wilson_rate",
]
