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


def compose(*overrides: str):
    """The run config Hydra composes for these command-line overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from relgen.registry import register_builtin_schemas

    register_builtin_schemas()
    with initialize_config_module(config_module="relgen.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def load_tiny(name: str, **overrides):
    """A freshly loaded tiny backbone (methods mutate backbones, so never share one)."""
    from omegaconf import OmegaConf

    from relgen.backbones.loading import load_backbone

    cfg = compose(f"backbone={name}").backbone
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return load_backbone(cfg)


def run_relgen(*args: str, module: str = "relgen", timeout: int = 900, env: dict | None = None, cwd=None):
    """Run ``python -m <module> args...`` in a subprocess; returns the CompletedProcess."""
    import subprocess
    import sys

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)
