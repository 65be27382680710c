"""The controller's state file, held under an exclusive lock: one controller per state file.

The lock is an ``flock`` on ``<state file>.lock``, taken for the life of the process and released by
the kernel when it dies (``kill -9`` included), so a restart never finds a stale lock. The state
itself is written atomically by ``turnout.io.statefile`` (temp, fsync, rename, fsync dir).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from turnout.io import statefile

__all__ = ["Locked", "Store"]


class Locked(Exception):
    """Another controller holds this state file."""


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._fd: int | None = None

    def lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Locked(f"{self.path} is in use by another controller (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def read(self) -> Any | None:
        statefile.clean(self.path)
        return statefile.read(self.path)

    def write(self, data: dict[str, Any]) -> None:
        statefile.write(self.path, data)

    def unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
