"""Each method keeps its effect, and the base model keeps reading word order, on the relworld model.

``benchmarks/relworld/regression.json`` holds the short version's settings, the content digest
of each world's model it was calibrated on and, per claim of the benchmark (method against the baseline
that could beat it, in the claim's reading), the effect measured with three seeds and the margin
set from their spread (mean - 2 sd). The method test (it trains the short version's networks,
about 90 s on two cores) reruns the short version with the first seed and fails when a claim's
effect falls below its margin: a change that breaks a method shows there. Claims whose
calibrated margin is not above zero (no reliable effect in the short run) are recorded in the
file but not enforced, and their tasks are not run. The file also holds the base model's own
checks (the diffusion classifier against relation-flipped and object-swapped captions,
calibrated the same way and enforced when the margin is above chance), run in the default
suite, so a change that stops the model reading word order shows at every run.
Recalibrate after changing the model or the short settings:
``python benchmarks/relworld/methods.py --calibrate 0,1,2``.
"""

from __future__ import annotations

import pytest

from relgen.relworld import bench
from relgen.relworld import model as rb


@pytest.fixture(scope="module")
def methods(relworld_script):
    return relworld_script("methods")


def _calibration(methods) -> dict:
    import json

    reg = json.loads(methods.REGRESSION_FILE.read_text())
    assert reg["settings"] == bench.plain(methods.SHORT), "the short settings changed: recalibrate regression.json"
    assert [c["claim"] for c in reg["checks"]] == list(methods.CHECKS), "the checks changed: recalibrate"
    assert reg.get("models") == methods.model_digests(), "a relworld model changed: recalibrate regression.json"
    for c in reg["checks"]:  # the file is consistent with its own numbers
        mean = sum(c["effects"]) / len(c["effects"])
        assert abs(c["mean"] - mean) < 1e-9 and c["enforced"] == (c["margin"] > 0)
    base = bench.plain(methods.BASE_SHORT)
    assert reg["base_settings"] == base, "the base checks' settings changed: recalibrate regression.json"
    for c in reg["base_checks"]:
        mean = sum(c["rates"]) / len(c["rates"])
        assert abs(c["mean"] - mean) < 1e-9 and c["enforced"] == (c["margin"] > base["chance"])
    return reg


@pytest.mark.skipif(not rb.is_trained(), reason="relgen/relworld/weights/ is not built")
def test_the_base_model_keeps_its_calibrated_margins(methods):
    reg = _calibration(methods)
    base_enforced = [c for c in reg["base_checks"] if c["enforced"]]
    if not base_enforced:
        pytest.skip("no base-model check showed a reliable effect in the calibration of regression.json")
    failures = methods.base_failures(reg, methods.base_rates(reg["seeds"][0]))
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(not rb.is_trained(), reason="relgen/relworld/weights/ is not built")
def test_each_method_keeps_its_calibrated_margin(methods, tmp_path):
    reg = _calibration(methods)
    enforced = [c for c in reg["checks"] if c["enforced"]]
    if not enforced:
        pytest.skip("no claim showed a reliable effect in the calibration of regression.json: nothing to enforce "
                    "until the relworld model is retrained and recalibrated")
    seed = reg["seeds"][0]
    s = bench.Settings(**methods.SHORT, seed=seed, train_seeds=(seed,))
    # only the tasks of enforced claims run (the others would cost minutes and check nothing)
    tasks = sorted({bench.CLAIMS[c["claim"]][0] for c in enforced})
    failures = methods.regression_failures(reg, bench.claims(bench.run(s, tasks, tmp_path), s))
    assert not failures, "\n".join(failures)
