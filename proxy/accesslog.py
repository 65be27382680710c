"""The access log: one JSON object per line, off by default, buffered when on.

Lines are gathered in memory and written with one ``write`` when the buffer fills or at the next
sweeper tick (at most ``flush_interval`` later), never one system call per request. With several
workers each appends whole lines to the same file (``O_APPEND``), so lines never interleave.
Fields: time, service, version, rule, bucket, method, path, status, bytes, duration_ms, upstream,
generation.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from turnout.core.model import AccessLog

__all__ = ["AccessLogWriter"]


class AccessLogWriter:
    def __init__(self, config: AccessLog) -> None:
        self.config = config
        if config.path == "-":
            self.fd = 2
            self.owned = False
        else:
            self.fd = os.open(config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self.owned = True
        self.lines: list[str] = []
        self.size = 0
        self.last_flush = 0.0

    def record(self, fields: dict[str, Any]) -> None:
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields},
                          separators=(",", ":")) + "\n"
        self.lines.append(line)
        self.size += len(line)
        if self.size >= self.config.buffer_bytes:
            self.flush()

    def tick(self, now: float) -> None:
        if self.lines and now - self.last_flush >= self.config.flush_interval:
            self.flush()
            self.last_flush = now

    def flush(self) -> None:
        if self.lines:
            data = "".join(self.lines).encode()
            self.lines.clear()
            self.size = 0
            while data:
                written = os.write(self.fd, data)
                data = data[written:]

    def close(self) -> None:
        self.flush()
        if self.owned:
            os.close(self.fd)
