"""Name registries for methods, backbones, datasets and evaluation prompt sets.

Everything registers through the entry-point group ``relgen.plugins``, relgen's own built-ins
included (``relgen = "relgen.builtins:plugin"``; a source tree without installed metadata
loads that same object). A plugin object may hold:

* ``methods``: a list of :class:`relgen.plugin.Method` classes or ``(target, config, summary)``
  triples, where ``target`` is a lazy ``"module:Class"`` string and ``config`` the method's
  config dataclass or its ``"module:Class"`` string; the registry name is the schema's
  ``name`` default and the schema is registered as ``/schema/method/<name>``. The older dict
  ``{name: target or (target, summary)}`` with ``schemas`` is accepted too.
* ``backbones``, ``datasets``, ``prompt_sets``: dicts of a name to a lazy ``"module:attr"``
  string or ``(target, summary)``;
* ``modules``: modules imported when the plugin loads (they call ``register_*`` themselves);
* ``config_package``: a package whose YAML Hydra adds to its search path.

Nothing heavy is imported here: registering stores a ``"module:attr"`` string, and the target
module is imported only when the name is looked up with ``get_*``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from hydra.core.config_store import ConfigStore

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
PROMPT_SETS = Registry("prompt set")


def _resolve(target: Any) -> Any:
    return _Entry(target).resolve() if isinstance(target, str) else target


def register_schema(group: str, name: str, node: type) -> None:
    """Make ``/schema/<group>/<name>`` available to YAML defaults lists."""
    ConfigStore.instance().store(group=f"schema/{group}", name=name, node=node)


def register_method_schema(schema: type) -> type:
    """Register a method's config dataclass as ``/schema/method/<its name default>``."""
    register_schema("method", _schema_name(schema), schema)
    return schema


def _schema_name(schema: Any) -> str:
    name = getattr(schema, "name", None)
    if not isinstance(name, str) or not name or name == "???":  # "???": omegaconf's MISSING
        raise ConfigError(f"{getattr(schema, '__name__', schema)}: a method's config dataclass needs a 'name' "
                          "default (name: str = \"mymethod\"); it is the method's registry name")
    return name


def register_method(target: Any, config: Any = None, *, summary: str = "", origin: str = "relgen",
                    name: Any = None):
    """Register a method; its name and schema come from the method itself.

    ``register_method(MyMethod)`` reads ``MyMethod.config_class`` (its ``name`` default is the
    registry name); ``register_method("pkg.method:MyMethod", MyConfig)`` keeps the class
    unimported until it is used. ``config`` may be a ``"module:Class"`` string. The schema is
    registered as ``/schema/method/<name>``. The older ``register_method(name, target)`` works too.
    """
    if isinstance(target, str) and ":" not in target and config is not None and name is None:
        target, config, name = config, None, target  # register_method(name, target)
    if config is None and not isinstance(target, str):
        config = target.config_class
    schema = _resolve(config) if config is not None else None
    if name is None:
        name = _schema_name(schema) if schema is not None else target.name
    if isinstance(schema, type) and schema.__dict__.get("name", None) == name:
        register_schema("method", name, schema)
    if not summary and not isinstance(target, str):
        summary = ((target.__doc__ or "").strip().splitlines() or [""])[0]
    return METHODS.register(name, target, summary=summary, origin=origin)


def register_backbone(name, target=None, **kw):
    return BACKBONES.register(name, target, **kw)


def register_dataset(name, target=None, **kw):
    return DATASETS.register(name, target, **kw)


def register_prompt_set(name, target=None, **kw):
    """A named evaluation prompt set: ``target(relation_words, loaded_run, relation, limit)``
    returns the :class:`relgen.evaluate.samples.EvalPrompt` list of ``prompts=<name>``."""
    return PROMPT_SETS.register(name, target, **kw)


def get_method(name: str):
    return METHODS.get(name)


def get_backbone(name: str):
    return BACKBONES.get(name)


def get_dataset(name: str):
    return DATASETS.get(name)


def get_prompt_set(name: str):
    return PROMPT_SETS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()


def list_backbones() -> list[str]:
    return BACKBONES.names()


def list_datasets() -> list[str]:
    return DATASETS.names()


def list_prompt_sets() -> list[str]:
    return PROMPT_SETS.names()


# --------------------------------------------------------------------------------------------
# Plugins (relgen's own built-ins are one)

#: relgen's own plugin object, the target of its ``relgen`` entry point; loaded directly too,
#: so a source tree whose metadata is not installed has its built-ins.
BUILTIN_PLUGIN = "relgen.builtins:plugin"
BUILTIN_NAME = "relgen"
_state: dict[str, Any] = {"plugins": None}


def plugin_entry_points() -> list:
    """The installed ``relgen.plugins`` entry points other than relgen's own."""
    return [ep for ep in entry_points(group=ENTRY_POINT_GROUP)
            if not (ep.name == BUILTIN_NAME and ep.value == BUILTIN_PLUGIN)]


def _plugins(strict: bool) -> list[tuple[str, str, Any]]:
    """``(entry point name, origin, plugin object)``: relgen's own plugin, then the installed ones."""
    out = [(BUILTIN_NAME, "relgen", _resolve(BUILTIN_PLUGIN))]
    for ep in plugin_entry_points():
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not break relgen itself
            if strict:
                raise ConfigError(f"plugin entry point '{ep.name}' ({ep.value}) failed to import: "
                                  f"{exc}; fix or uninstall that package") from exc
            continue  # reported with a clear message when the registry is first used
        out.append((ep.name, f"plugin {ep.name}", plugin))
    return out


def _method_entries(plugin: Any) -> list[tuple[Any, Any, str, Any]]:
    """``(target, config, summary, name)`` of each method a plugin declares."""
    methods = getattr(plugin, "methods", None) or []
    if isinstance(methods, dict):
        schemas = getattr(plugin, "schemas", None) or {}
        out = []
        for name, target in methods.items():
            target, summary = target if isinstance(target, tuple) else (target, "")
            out.append((target, schemas.get(f"method/{name}"), summary, name))
        return out
    return [(*m, None) if isinstance(m, tuple) else (m, None, "", None) for m in methods]


def _load_plugins() -> None:
    """Register what relgen's own plugin and every ``relgen.plugins`` entry point declares."""
    if _state["plugins"] is not None:
        return
    _state["plugins"] = []
    for ep_name, origin, plugin in _plugins(strict=True):
        _register_plugin(ep_name, origin, plugin)


def load_plugins() -> None:
    """Import every plugin once (relgen's own first), so that what they register on import, such
    as evaluation metrics, is known."""
    _load_plugins()


def refresh_plugins() -> list[str]:
    """Register the plugins installed since the registry was first used in this process (e.g. a
    package put on ``sys.path`` by a test); returns their entry-point names."""
    before = list(_state["plugins"] or [])
    _load_plugins()
    for ep_name, origin, plugin in _plugins(strict=True):
        if ep_name != BUILTIN_NAME and ep_name not in _state["plugins"]:
            _register_plugin(ep_name, origin, plugin)
    return [name for name in _state["plugins"] if name not in before]


def forget_plugin(ep_name: str) -> None:
    """Drop every name the entry point ``ep_name`` registered (the inverse of :func:`refresh_plugins`)."""
    for registry in (METHODS, BACKBONES, DATASETS, PROMPT_SETS):
        for name in [n for n, e in registry.entries.items() if e.origin == f"plugin {ep_name}"]:
            del registry.entries[name]
    if _state["plugins"] and ep_name in _state["plugins"]:
        _state["plugins"].remove(ep_name)


def _register_plugin(ep_name: str, origin: str, plugin: Any) -> None:
    for module in getattr(plugin, "modules", None) or ():
        importlib.import_module(module)
    for target, config, summary, name in _method_entries(plugin):
        register_method(target, config, summary=summary, origin=origin, name=name)
    for registry, attr in ((BACKBONES, "backbones"), (DATASETS, "datasets"), (PROMPT_SETS, "prompt_sets")):
        for name, target in (getattr(plugin, attr, None) or {}).items():
            target, summary = target if isinstance(target, tuple) else (target, "")
            registry.register(name, target, summary=summary, origin=origin)
    if ep_name != BUILTIN_NAME:
        _state["plugins"].append(ep_name)


def _plugin_hint() -> str:
    names = _state["plugins"] or []
    return f" (installed plugins: {', '.join(names)})" if names else " (no relgen.plugins entry points installed)"


def _register_schemas(plugin: Any) -> None:
    for target, config, _, name in _method_entries(plugin):
        if config is None and isinstance(target, str):
            continue  # a lazy class without its schema: the plugin's ``schemas`` names it
        schema = _resolve(config) if config is not None else target.config_class
        register_schema("method", name or _schema_name(schema), schema)
    for key, target in (getattr(plugin, "schemas", None) or {}).items():
        group, _, name = key.partition("/")
        register_schema(group, name, _resolve(target))


def register_builtin_schemas() -> None:
    """Register the built-in methods' config schemas in Hydra's ConfigStore (no torch import).

    Every path that composes a run calls it first: the CLI, :func:`relgen.config.compose_run`,
    and Hydra's search-path plugin through :func:`plugin_config_packages`.
    """
    _register_schemas(_resolve(BUILTIN_PLUGIN))


def plugin_config_packages() -> list[str]:
    """Register the built-in and installed plugins' schemas; return the plugins' ``config_package`` names."""
    packages = []
    for _, _, plugin in _plugins(strict=False):
        _register_schemas(plugin)
        package = getattr(plugin, "config_package", None)
        if package:
            packages.append(package)
    return packages
