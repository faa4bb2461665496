"""Run folders: who owns one, how a default one is named and found again, and when to remove it.

* :class:`RunLock` — one process owns a run folder. The owner holds an exclusive ``fcntl``
  lock on ``<run_dir>/.lock`` for as long as it runs; the kernel releases it when the process
  exits or is killed, so a lock file left by a killed run never blocks a resume. The file
  holds the owner's pid, which a refused second run names.
* :func:`find_latest_run` — ``resume=latest`` without an explicit ``hydra.run.dir``: the
  newest run of the same method, backbone and dataset under ``output_root``.
* :func:`note_created` / :func:`was_created` — whether this process created a folder, so that
  a run that stops before training removes only a folder it made itself.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from relgen.errors import ConfigError

LOCK_NAME = ".lock"

# Folders this process created (absolute path → the topmost folder it had to create for it).
_CREATED: dict[str, Path] = {}


class RunLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<run_dir>/.lock``.

    Args:
        run_dir: the run folder (created if missing).

    Raises:
        ConfigError: from :meth:`acquire` when another live process holds the lock; the line
            names the folder and the holder's pid.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = self.holder()
            who = f"pid {holder}" if holder else "another process"
            raise ConfigError(f"{self.run_dir}: in use by another relgen run ({who}); wait for it to "
                              "finish, or choose another hydra.run.dir") from None
        # The lock is ours: record our pid (a stale pid of a killed owner is overwritten).
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> Optional[int]:
        """The pid written by the current (or last) owner, if readable."""
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock (probes without keeping it)."""
    path = Path(run_dir) / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may just have taken
    return False


def run_name(when: Optional[datetime] = None, pid: Optional[int] = None) -> str:
    """A default run folder name: the start time to the millisecond and the starting pid.

    ``2025-01-31_14-05-09.123_p4242``: sorts by time, stays readable, and two runs started in the
    same millisecond on one machine still differ by pid.
    """
    when = when or datetime.now()
    pid = os.getpid() if pid is None else pid
    return f"{when:%Y-%m-%d_%H-%M-%S}.{when.microsecond // 1000:03d}_p{pid}"


def find_latest_run(output_root: Path, method: str, backbone: str, dataset: str,
                    exclude: Optional[Path] = None) -> Optional[Path]:
    """The run under ``output_root/method/backbone/dataset/`` whose newest checkpoint is the most recent.

    Only folders holding at least one complete checkpoint count; ``exclude`` (the folder this
    process was just given) is skipped.
    """
    from relgen.train.checkpoint import checkpoint_dirs

    parent = Path(output_root) / method / backbone / dataset
    if not parent.is_dir():
        return None
    best: Optional[tuple[float, str, Path]] = None
    for run in parent.iterdir():
        if not run.is_dir() or (exclude is not None and run.resolve() == Path(exclude).resolve()):
            continue
        found = checkpoint_dirs(run)
        if not found:
            continue
        key = ((found[-1] / "state.pt").stat().st_mtime, run.name, run)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def note_created(path: Path) -> None:
    """Record that this process is about to create ``path`` (and any missing parents)."""
    path = Path(os.path.abspath(path))
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    _CREATED[str(path)] = top


def forget_created(path: Path) -> None:
    """``path`` holds a run now: never remove it as a folder this process made."""
    _CREATED.pop(os.path.abspath(path), None)


def was_created(path: Path) -> bool:
    return os.path.abspath(path) in _CREATED


def remove_if_created(path: Path, held: Optional[RunLock] = None) -> bool:
    """Remove ``path`` when this process created it, and the parents it created that are now
    empty; returns whether it removed ``path``.

    Two processes started together may both believe they created a new folder; the folder
    belongs to whichever holds its lock. So ``path`` is removed only under its lock: ``held``
    (this process's lock, when it holds one) or one taken here; when another live process
    holds it, the folder is that process's and stays.
    """
    key = os.path.abspath(path)
    top = _CREATED.pop(key, None)
    if top is None or not Path(key).exists():
        return False
    lock = held if held is not None and held.held and os.path.abspath(held.run_dir) == key else None
    if lock is None:
        try:
            lock = RunLock(Path(key)).acquire()
        except (ConfigError, OSError):  # another run owns it now (or it cannot be locked): not ours to remove
            return False
    try:
        shutil.rmtree(key, ignore_errors=True)
    finally:
        if lock is not held:
            lock.release()
    parent = Path(key).parent
    while top != Path(key) and parent.is_relative_to(top):
        try:
            parent.rmdir()  # only while empty: a sibling run keeps it
        except OSError:
            break
        parent = parent.parent
    return True


# --------------------------------------------------------------------------- sweep job names
#: Written when the sweep starts: the override keys that vary across its jobs (for job names).
SWEEP_INFO = ".relgen-sweep.json"
#: Keys never shown in a job folder name.
HIDDEN_KEYS = {"hydra.sweep.dir", "output_root", "hydra.launcher.n_jobs"}


# ---------------------------------------------------------------------------------- job names
def _short_value(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        text = value
    else:
        text = value if re.fullmatch(r"-?\d+", value) else f"{number:.4g}"
    text = re.sub(r"[^\w.=+\-]", "-", text)  # no path separators, quotes or spaces in a folder name
    return text[:24]


def job_name(sweep_dir: str, num: Any, overrides: Any) -> str:
    """``003_lr=0.0002,steer_loss_weight=0.01``: the job number and the overrides that vary.

    The varying keys come from :data:`SWEEP_INFO` in the sweep folder (written by
    :class:`SweepCallback`); without it every override is shown.
    """
    varying: Optional[set[str]] = None
    try:
        with open(os.path.join(str(sweep_dir), SWEEP_INFO)) as f:
            varying = set(json.load(f)["varying"])
    except (OSError, ValueError, KeyError):
        pass
    parts = []
    for item in overrides or []:
        key, sep, value = str(item).lstrip("+~").partition("=")
        if not sep or key in HIDDEN_KEYS or (varying is not None and key not in varying):
            continue
        parts.append(f"{key.rsplit('.', 1)[-1]}={_short_value(value)}")
    name = f"{int(num):03d}"
    if parts:
        name += "_" + ",".join(parts)
    return name[:120]
