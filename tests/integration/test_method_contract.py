"""The built-in methods pass the contract :func:`relgen.testing.check_method` offers plugins
(dry-run checks, exact resume, export loading and generation), on each family of backbone.
Marked slow: the methods' own resume and export tests cover the same ground in the default suite."""

import pytest

from relgen.testing import check_method

CASES = {
    "textual_inversion-tiny_sdxl": ("method=textual_inversion", "backbone=tiny_sdxl", "dataset=shapes_reversion"),
    "reversion-tiny_sd15": ("method=reversion", "backbone=tiny_sd15", "dataset=shapes_reversion"),
    "rrnet-tiny_sd21": ("method=rrnet", "backbone=tiny_sd21", "dataset=shapes_rrnet"),
    "relationbooth-tiny_sdxl": ("experiment=relationbooth_tiny", "backbone=tiny_sdxl"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_built_in_method_passes_the_plugin_contract(case, tmp_path):
    out = check_method(tmp_path, *CASES[case])
    assert (out["run"] / "export" / "relgen.json").is_file() and out["grid"].stat().st_size > 0
