"""Adds the YAML of installed relgen plugins to Hydra's config search path.

Every ``relgen.plugins`` entry point may name a ``config_package`` (a Python package holding
``method/``, ``backbone/`` or ``dataset/`` YAML) and ``schemas`` (``{"method/<name>":
"module:Dataclass"}``), which are registered in Hydra's ConfigStore before composition.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class RelgenPluginSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from relgen.registry import plugin_config_packages

        for package in plugin_config_packages():
            search_path.append(provider="relgen-plugin", path=f"pkg://{package}")
