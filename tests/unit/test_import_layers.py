"""Imports run one way (docs/development.md, "Imports"): read every relgen module's imports,
function-local ones included, and refuse a circle, a core module that imports a method package
or the layers above it, and a comparison with a registered method's name outside relgen/methods/."""

import ast
from pathlib import Path

from relgen.registry import list_methods

ROOT = Path(__file__).resolve().parents[2] / "relgen"
#: Layers that never import the named ones (the core never names a method).
FORBIDDEN = {"relgen.data": ("relgen.methods", "relgen.run", "relgen.cli", "relgen.generate"),
             "relgen.backbones": ("relgen.methods", "relgen.run", "relgen.cli", "relgen.generate"),
             "relgen.train": ("relgen.methods", "relgen.run", "relgen.cli", "relgen.generate"),
             "relgen.evaluate": ("relgen.methods", "relgen.relworld"),
             "relgen": ("relgen.methods",)}
#: The one place the proving ground still reaches across (relworld's own detector metric is
#: registered with the general metrics). Nothing may join it.
EXCEPTIONS = {("relgen.relworld.metric", "relgen.relworld")}


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = (path, ast.parse(path.read_text()))
    return out


def _imports(tree: ast.Module, modules) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {f"{node.module}.{a.name}" for a in node.names}
    found = set()
    for name in (n for n in names if n.startswith("relgen")):
        while name not in modules:  # "relgen.x.attr" -> the module "relgen.x"
            name = name.rpartition(".")[0]
        found.add(name)
    return found


def test_no_circles_and_no_upward_imports():
    modules = _modules()
    graph = {name: _imports(tree, modules) - {name} for name, (_, tree) in modules.items()}
    for name, deps in graph.items():
        if not name.startswith("relgen.methods"):
            layer = max((k for k in FORBIDDEN if name == k or name.startswith(k + ".")), key=len)
            bad = [d for d in deps if d.startswith(FORBIDDEN[layer]) and (name, ".".join(d.split(".")[:2])) not in EXCEPTIONS]
            assert not bad, f"{name} imports {bad}, above its layer"
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            assert state.get(dep) != 1, "import circle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_method_name_is_compared_outside_the_method_packages():
    names = set(list_methods())
    for name, (path, tree) in _modules().items():
        if name.startswith("relgen.methods"):
            continue
        for node in (n for n in ast.walk(tree) if isinstance(n, ast.Compare)):
            values = [v for c in [node.left, *node.comparators] for v in [c, *getattr(c, "elts", [])]]
            hits = [v.value for v in values if isinstance(v, ast.Constant) and v.value in names
                    and (name, v.value) not in EXCEPTIONS]
            assert not hits, f"{path}:{node.lineno} compares with the method name {hits[0]!r}; add a hook"
