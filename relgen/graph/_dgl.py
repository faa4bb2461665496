"""The single entry point for importing DGL.

DGL 2.x imports its GraphBolt sub-package from ``dgl/__init__`` (through
``dgl.dataloading`` -> ``dgl.distributed``). GraphBolt loads a compiled library that is
built per torch version and needs ``torchdata``; DGL 2.1.0 ships it only for torch 2.0.0
to 2.2.1, so on newer torch ``import dgl`` fails although nothing we use needs GraphBolt.
:func:`import_dgl` decides *before* the first import whether GraphBolt is loadable and,
if not, registers a placeholder module under ``dgl.graphbolt``. Deciding up front matters:
a failed ``import dgl`` leaves ``libdgl`` half-initialised, so "try, then patch" does not
work.

Every other module imports DGL through :func:`import_dgl` or :func:`import_dgl_nn`, so the
workaround lives in one place and DGL is imported only when a graph is actually built.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers only, never executed
    from dgl import DGLGraph
else:
    DGLGraph = Any

__all__ = ["DGLGraph", "import_dgl", "import_dgl_nn"]

_GRAPHBOLT = "dgl.graphbolt"


def _dgl_package_dir() -> str | None:
    """Return the installed ``dgl`` package folder without importing it, or ``None``."""
    spec = importlib.util.find_spec("dgl")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _graphbolt_needs_stub(dgl_dir: str) -> bool:
    """Whether ``dgl.graphbolt`` exists but cannot be loaded with the running torch.

    Args:
        dgl_dir: The installed ``dgl`` package folder.

    Returns:
        ``True`` when DGL has a GraphBolt folder (DGL >= 2.0) and either the compiled
        library for this torch version or the ``torchdata`` package is missing.
    """
    graphbolt_dir = os.path.join(dgl_dir, "graphbolt")
    if not os.path.isdir(graphbolt_dir):
        # DGL 1.x has no GraphBolt; its import works as is.
        return False
    import torch

    torch_version = torch.__version__.split("+")[0]
    library = os.path.join(graphbolt_dir, f"libgraphbolt_pytorch_{torch_version}.so")
    has_torchdata = importlib.util.find_spec("torchdata") is not None
    return not (os.path.exists(library) and has_torchdata)


def _make_graphbolt_stub() -> types.ModuleType:
    """Build the placeholder for ``dgl.graphbolt``.

    Attribute access raises :class:`ImportError` so that any real use of GraphBolt fails
    loudly. Dunder names raise :class:`AttributeError` instead: ``inspect.getmodule``
    (run, for example, when diffusers is imported after DGL) probes every loaded module
    with ``hasattr(module, "__file__")``, and ``hasattr`` only swallows AttributeError.
    """
    stub = types.ModuleType(_GRAPHBOLT)

    def __getattr__(name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"{_GRAPHBOLT}.{name} is unavailable: DGL's GraphBolt library is not built for "
            "the installed torch version"
        )

    stub.__getattr__ = __getattr__  # type: ignore[method-assign]
    return stub


def import_dgl() -> types.ModuleType:
    """Import and return the ``dgl`` module, working around GraphBolt if needed.

    Sets ``DGLBACKEND=pytorch`` unless the variable is already set; without it DGL prints
    a backend notice on first import and writes ``~/.dgl/config.json``.

    Returns:
        The imported ``dgl`` module.

    Raises:
        ImportError: If DGL is not installed.
    """
    os.environ.setdefault("DGLBACKEND", "pytorch")
    loaded = sys.modules.get("dgl")
    if loaded is not None:
        return loaded
    dgl_dir = _dgl_package_dir()
    if dgl_dir is None:
        raise ImportError(
            "RRNet's graph network needs the 'dgl' package (tested with dgl 2.1.0); "
            "install it with pip, for example 'pip install dgl==2.1.0 pandas'"
        )
    if _GRAPHBOLT not in sys.modules and _graphbolt_needs_stub(dgl_dir):
        sys.modules[_GRAPHBOLT] = _make_graphbolt_stub()
    return importlib.import_module("dgl")


def import_dgl_nn() -> types.ModuleType:
    """Import and return ``dgl.nn.pytorch`` (``GATConv``, ``HeteroGraphConv``, ...).

    Returns:
        The ``dgl.nn.pytorch`` module.
    """
    import_dgl()
    return importlib.import_module("dgl.nn.pytorch")
