"""The admin state file: written so that a crash at any moment leaves either the old or the new file.

Write a temporary file in the same directory, fsync it, rename it over the old one (atomic on POSIX),
then fsync the directory so the rename itself is durable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read", "write"]


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
