"""The state file of a writer of routing state (the proxy's admin state, the controller's store):
written so that a crash at any moment leaves either the old or the new file.

Write a temporary file in the same directory, fsync it, rename it over the old one (atomic on POSIX),
then fsync the directory so the rename itself is durable. ``clean`` removes the temporary files a
``kill -9`` may leave behind. With ``tokens``, the core's only file I/O: both processes persist the
same ``history.Desired`` this way, and neither may import the other's shell.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["clean", "read", "write"]


def write(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1, sort_keys=True).encode()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read(path: Path) -> Any | None:
    """The saved state, or None when there is none yet. A corrupt file is an error, not a fresh start:
    silently dropping admin changes would be worse than refusing to start."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def clean(path: Path) -> list[Path]:
    """Remove the temporary files of writes that never finished (their writer was killed); say which."""
    left = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for temporary in left:
        temporary.unlink(missing_ok=True)
    return left
