"""Name registries for methods, backbones and datasets.

Built-ins are imported explicitly (:func:`_import_builtins`), so a built-in name can never be
"not registered". Third-party packages register through the entry-point group
``relgen.plugins``: the entry point names an object with optional ``methods``, ``backbones``
and ``datasets`` dicts mapping a registry name to a lazy ``"module:attr"`` string, and an
optional ``config_package`` whose YAML Hydra adds to its search path.

Nothing heavy is imported here: registering stores a factory or a ``"module:attr"`` string,
and the target module is imported only when the name is looked up with ``get_*``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from relgen.errors import ConfigError

ENTRY_POINT_GROUP = "relgen.plugins"


@dataclass
class _Entry:
    target: Any  # the object itself, or a "module:attr" string imported on first use
    summary: str = ""
    origin: str = "relgen"

    def resolve(self) -> Any:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self.target = obj
        return self.target


@dataclass
class Registry:
    """A flat name → object registry (timm style)."""

    kind: str
    entries: dict[str, _Entry] = field(default_factory=dict)

    def register(self, name: str, target: Any = None, *, summary: str = "", origin: str = "relgen"):
        """Register ``target`` under ``name``; used bare it is a decorator."""
        if target is None:
            def decorator(obj):
                self.register(name, obj, summary=summary, origin=origin)
                return obj
            return decorator
        if name in self.entries and self.entries[name].target is not target:
            raise ConfigError(f"{self.kind} '{name}' is registered twice "
                              f"({self.entries[name].origin} and {origin}); rename one of them")
        self.entries[name] = _Entry(target, summary, origin)
        return target

    def get(self, name: str) -> Any:
        _load_plugins()
        if name not in self.entries:
            known = ", ".join(sorted(self.entries)) or "none"
            raise ConfigError(f"unknown {self.kind} '{name}'; known {self.kind}s: {known}"
                              f"{_plugin_hint()}")
        return self.entries[name].resolve()

    def names(self) -> list[str]:
        _load_plugins()
        return sorted(self.entries)

    def summary(self, name: str) -> str:
        return self.entries[name].summary


METHODS = Registry("method")
BACKBONES = Registry("backbone")
DATASETS = Registry("dataset")


def register_method(name, target=None, **kw):
    return METHODS.register(name, target, **kw)


def register_backbone(name, target=None, **kw):
    return BACKBONES.register(name, target, **kw)


def register_dataset(name, target=None, **kw):
    return DATASETS.register(name, target, **kw)


def get_method(name: str):
    return METHODS.get(name)


def get_backbone(name: str):
    return BACKBONES.get(name)


def get_dataset(name: str):
    return DATASETS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()


def list_backbones() -> list[str]:
    return BACKBONES.names()


def list_datasets() -> list[str]:
    return DATASETS.names()


# --------------------------------------------------------------------------------------------
# Built-ins and entry-point plugins

_BUILTIN_MODULES = (
    "relgen.methods",
    "relgen.backbones",
    "relgen.data.registry",
    "relgen.relworld.datasets",
)
_state = {"builtins": False, "plugins": None}


def _import_builtins() -> None:
    if not _state["builtins"]:
        _state["builtins"] = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def plugin_entry_points() -> list:
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _load_plugins() -> None:
    """Import built-ins, then register what every ``relgen.plugins`` entry point declares."""
    _import_builtins()
    if _state["plugins"] is not None:
        return
    _state["plugins"] = []
    for ep in plugin_entry_points():
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not break relgen itself
            raise ConfigError(f"plugin entry point '{ep.name}' ({ep.value}) failed to import: "
                              f"{exc}; fix or uninstall that package") from exc
        origin = f"plugin {ep.name}"
        for registry, attr in ((METHODS, "methods"), (BACKBONES, "backbones"), (DATASETS, "datasets")):
            for name, target in (getattr(plugin, attr, None) or {}).items():
                summary = ""
                if isinstance(target, tuple):
                    target, summary = target
                registry.register(name, target, summary=summary, origin=origin)
        _state["plugins"].append(ep.name)


def _plugin_hint() -> str:
    names = _state["plugins"] or []
    return f" (installed plugins: {', '.join(names)})" if names else " (no relgen.plugins entry points installed)"


def register_builtin_schemas() -> None:
    """Register the built-in methods' config schemas in Hydra's ConfigStore.

    Each built-in method's ``config`` module registers its own schema when imported, so this
    imports them (through :mod:`relgen.methods`, which imports no torch). Every path that
    composes a run calls it first: the CLI, and Hydra's search-path plugin through
    :func:`plugin_config_packages`.
    """
    importlib.import_module("relgen.methods")


def plugin_config_packages() -> list[str]:
    """Register the built-in and installed plugins' schemas; return the plugins' ``config_package`` names."""
    from relgen.config import register_schema

    register_builtin_schemas()
    packages = []
    for ep in plugin_entry_points():
        try:
            plugin = ep.load()
        except Exception:
            continue  # reported with a clear message when the registry is first used
        for key, target in (getattr(plugin, "schemas", None) or {}).items():
            group, _, name = key.partition("/")
            register_schema(group, name, _Entry(target).resolve())
        package = getattr(plugin, "config_package", None)
        if package:
            packages.append(package)
    return packages
