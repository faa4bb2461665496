"""The wheel ships every package folder (conf/ as relgen.conf) and the package data."""

import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for init in (ROOT / "relgen").rglob("*.py"):
        if any(part in ("__pycache__", "data") for part in init.relative_to(ROOT).parts[:-1]):
            continue
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    for yaml in (ROOT / "conf").rglob("*.yaml"):
        found.add(".".join(("relgen", "conf") + yaml.parent.relative_to(ROOT / "conf").parts))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    for pkg in found:
        if pkg.startswith("relgen.conf"):
            rel = Path("conf", *pkg.split(".")[2:])
        else:
            rel = Path(*pkg.split("."))
        assert (ROOT / rel / "__init__.py").is_file(), f"{rel} needs an __init__.py"


def test_notice_names_every_shipped_data_file():
    notice = (ROOT / "NOTICE").read_text()
    data_files = [p for p in (ROOT / "relgen").rglob("data/*") if p.is_file() and p.suffix in (".txt", ".json")]
    assert data_files
    for path in data_files:
        assert path.name in notice, f"NOTICE does not say where {path.relative_to(ROOT)} comes from"


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/demo.sh" in readme
    assert "bash scripts/test.sh" in ci


def test_wheel_ships_configs_and_package_data(tmp_path):
    """A non-editable install gets relgen.conf and every data file (conf/ lives outside relgen/)."""
    import subprocess
    import sys
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           str(ROOT), "-w", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("relgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"relgen/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "relgen").rglob("data/*") if p.is_file()}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "relgen" / "relworld" / "weights").rglob("*") if p.is_file()}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "relgen" / "backbones" / "data").rglob("*") if p.is_file()}
    expected.add("hydra_plugins/relgen_searchpath/__init__.py")
    assert expected - names == set()


def _fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout (the test fails on any error)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


@pytest.mark.parametrize("package, schema, name", [
    ("textual_inversion", "TextualInversionConfig", "textual_inversion"),
    ("reversion", "ReVersionConfig", "reversion"),
    ("rrnet", "RRNetConfig", "rrnet"),
    ("relationbooth", "RelationBoothConfig", "relationbooth"),
])
def test_a_method_config_imports_on_its_own(package, schema, name):
    out = _fresh(f"from relgen.methods.{package}.config import {schema}\n"
                 "from hydra.core.config_store import ConfigStore\n"
                 f"print({schema}().name, '{name}.yaml' in ConfigStore.instance().repo['schema']['method'])")
    assert out == f"{name} True"  # importable alone, and the method registered its own schema


def test_the_core_registers_no_method_schema():
    out = _fresh("import sys\n"
                 "import relgen.config\n"
                 "from hydra.core.config_store import ConfigStore\n"
                 "repo = ConfigStore.instance().repo['schema']['method']\n"
                 "print(sorted(repo), any(m.startswith('relgen.methods') for m in sys.modules))\n"
                 "from relgen.registry import register_builtin_schemas\n"
                 "register_builtin_schemas()\n"
                 "print(sorted(repo), 'torch' in sys.modules)\n")
    core, builtins = out.splitlines()
    assert core == "['base.yaml'] False"
    assert builtins == ("['base.yaml', 'relationbooth.yaml', 'reversion.yaml', 'rrnet.yaml', "
                        "'textual_inversion.yaml'] False")


def test_every_command_has_a_console_script_and_the_readme_says_how_to_run_them():
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"relgen": "relgen.cli:train_main", "relgen-generate": "relgen.generate:main",
                       "relgen-evaluate": "relgen.evaluate.__main__:main",
                       "relgen-import-official": "relgen.import_official:main", "relgen-list": "relgen.list:main"}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target
    readme = (ROOT / "README.md").read_text()
    # a fresh shell has no relgen on its Python: the README says how to reach the environment's
    assert "source .venv/bin/activate" in readme and ".venv/bin/relgen method=rrnet" in readme
    assert "relgen method=rrnet              # the same as python -m relgen method=rrnet" in readme
