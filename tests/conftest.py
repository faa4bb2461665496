import os
from pathlib import Path

import pytest

# Offline and quiet for every test; set before torch/diffusers/dgl are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("DGLBACKEND", "pytorch")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from several threads, and pytest plus a CLI subprocess each using
# every core oversubscribe a small machine badly; one thread per process keeps timings sane.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The official-format samples, found through RELGEN_SAMPLES_DIR; skip when unset."""
    root = os.environ.get("RELGEN_SAMPLES_DIR")
    if not root or not Path(root).is_dir():
        pytest.skip("RELGEN_SAMPLES_DIR is not set to the official samples folder")
    return Path(root)


@pytest.fixture(scope="session")
def relworld_script():
    """``load(name)``: ``benchmarks/relworld/<name>.py`` imported once per session as module
    ``relworld_<name>`` (registered in ``sys.modules``, where dataclasses look their module up)."""
    import importlib.util
    import sys

    loaded = {}

    def load(name: str):
        if name not in loaded:
            path = Path(__file__).resolve().parents[1] / "benchmarks" / "relworld" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(f"relworld_{name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    yield load
    for module in loaded.values():
        sys.modules.pop(module.__name__, None)


# One cache folder per test session: tiny backbones and synthetic datasets are built once,
# and nothing is written to the user's ~/.cache.
if "RELGEN_CACHE" not in os.environ:
    import tempfile

    os.environ["RELGEN_CACHE"] = tempfile.mkdtemp(prefix="relgen-test-cache-")


# The helpers a plugin author uses too live in the package (relgen.testing), and the tests
# import them from there; they stay importable from here for code that still does.
from relgen.testing import compose, load_tiny, run_relgen, short_run, synthetic_data  # noqa: E402,F401


def grid_cells(path, cell: int = 128, label_width: int = 160) -> tuple[int, int]:
    """``(rows, columns)`` of a labelled grid PNG with ``cell``-px cells, a row-label column and a
    title/header band above (shorter than a cell); asserts the layout adds up exactly."""
    from PIL import Image

    width, height = Image.open(path).size
    assert (width - label_width) % cell == 0, (width, height)
    assert 0 < height % cell < cell, (width, height)  # the title and header band
    return height // cell, (width - label_width) // cell


def local_weights(backbone: str = "tiny_sd15"):
    """A local diffusers folder (the tiny backbone's, built once) for ``backbone.pretrained=`` in dry
    runs of real-backbone presets, whose hub weights are not on this machine."""
    from relgen.backbones.loading import materialize_tiny

    return materialize_tiny(compose(f"backbone={backbone}").backbone)
