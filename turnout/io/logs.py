"""Process logs, for both processes: plain lines for people (``turnout[pid] INFO …``) or JSON lines for
log pipelines (``--log-format json``: one object per line with ``time``, ``level``, ``program``,
``pid``, ``message``). The level and format come from the command line, else ``TURNOUT_LOG_LEVEL`` and
``TURNOUT_LOG_FORMAT``; they are written back to the environment so that worker processes log alike.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "setup"]

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(), "program": self.program,
                 "pid": record.process, "message": record.getMessage()}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(program: str, level: str | None = None, fmt: str | None = None) -> None:
    level = (level or os.environ.get("TURNOUT_LOG_LEVEL") or "info").lower()
    fmt = (fmt or os.environ.get("TURNOUT_LOG_FORMAT") or "text").lower()
    if level not in LEVELS:
        level = "info"
    os.environ["TURNOUT_LOG_LEVEL"], os.environ["TURNOUT_LOG_FORMAT"] = level, fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(program) if fmt == "json"
                         else logging.Formatter(f"{program}[%(process)d] %(levelname)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
