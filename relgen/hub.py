"""Is a hub model there? Answered in seconds, before anything loads.

huggingface_hub retries an unreachable hub for minutes inside ``from_pretrained``. So a
run asks once, cheaply: is the model in the local Hugging Face cache (no network needed), and
if not, can the hub's host be reached at all (one TCP connection with a short timeout)? A
model that is neither cached nor reachable fails at once with a line that says what was looked
for. When the hub cannot be reached but the model is cached, the rest of the run is put in
offline mode (``HF_HUB_OFFLINE=1``), so loading reads the cache without retries.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Optional
from urllib.parse import urlparse

from relgen.errors import ConfigError

#: Seconds to wait for the hub's host to accept a connection.
CONNECT_TIMEOUT = 3.0


def looks_like_path(value: str) -> bool:
    """Whether a model source is written as a path (not a hub id)."""
    return value.startswith(("/", "./", "../", "~", ".\\")) or value.endswith((".safetensors", ".ckpt", ".bin", ".pt"))


def is_cached(repo_id: str, filename: str, revision: Optional[str] = None) -> bool:
    """``filename`` of ``repo_id`` is in the local Hugging Face cache (no network is used)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # noqa: BLE001 - an id that is not a valid repo name is simply not cached
        return False
    return isinstance(found, str)


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0")


@lru_cache(maxsize=None)
def hub_reachable(endpoint: Optional[str] = None, timeout: float = CONNECT_TIMEOUT) -> bool:
    """One TCP connection to the hub's host (``HF_ENDPOINT``); asked once per process."""
    from huggingface_hub import constants

    url = urlparse(endpoint or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Make the rest of this process read the hub cache only (no retries against an unreachable hub)."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def check_hub_source(key: str, repo_id: str, revision: Optional[str], probe_file: str, hint: str = "") -> None:
    """Raise :class:`ConfigError` at once when ``repo_id`` is neither cached nor on a reachable hub.

    Args:
        key: The config key that named it (for the message).
        repo_id: The hub id.
        revision: The revision asked for (``None``: the default branch).
        probe_file: A file every such repository has (``model_index.json``, ``config.json``).
        hint: How to fix it, appended to the message.
    """
    from huggingface_hub import constants

    if is_cached(repo_id, probe_file, revision):
        if not offline_mode() and not hub_reachable():
            go_offline()
        return
    where = f"'{repo_id}'" + (f" at revision {revision}" if revision else "")
    if offline_mode():
        reason = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        reason = f"the hub ({constants.ENDPOINT}) cannot be reached"
    else:
        return  # not cached but reachable: it downloads when the run loads it
    raise ConfigError(f"{key}: {where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}"
                      + (f"; {hint}" if hint else ""))


__all__ = ["check_hub_source", "go_offline", "hub_reachable", "is_cached", "offline_mode"]
