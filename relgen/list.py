"""``python -m relgen.list``: the registered methods, backbones and datasets, one line each."""

from __future__ import annotations

import sys

from relgen.console import run_cli
from relgen.registry import BACKBONES, DATASETS, METHODS, list_methods


def main() -> int:
    def body() -> int:
        list_methods()  # imports built-ins and plugins
        for title, registry in (("methods", METHODS), ("backbones", BACKBONES), ("datasets", DATASETS)):
            print(f"{title}:")
            for name in registry.names():
                entry = registry.entries[name]
                origin = "" if entry.origin == "relgen" else f"  [{entry.origin}]"
                print(f"  {name:22s} {entry.summary}{origin}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
