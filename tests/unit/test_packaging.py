"""The wheel ships every package folder (conf/ as relgen.conf) and the package data."""

import tomllib
from pathlib import Path

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
