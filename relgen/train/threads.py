"""CPU threads on a shared machine: ``trainer.num_threads`` and a warning when the machine is
already busy (two processes that each use every core run many times slower than either alone)."""

from __future__ import annotations

import os
from typing import Optional


def busy_machine_warning(num_threads: Optional[int]) -> Optional[str]:
    """A warning line when the machine's 1-minute load average already exceeds its cores, else None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        return None
    cores = os.cpu_count() or 1
    if load <= cores:
        return None
    line = (f"the machine's load is {load:.1f} (1-minute average) on {cores} cores: other processes already "
            "use them all, so this run will be slow")
    if num_threads is None:
        line += (f", and torch will start {_torch_threads()} threads more; set trainer.num_threads= to a share "
                 "of the cores (e.g. trainer.num_threads=1)")
    return line


def set_num_threads(num_threads: Optional[int]) -> Optional[int]:
    """Apply ``trainer.num_threads`` (None: leave torch's choice); returns the previous count to restore."""
    if num_threads is None:
        return None
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    return before


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
