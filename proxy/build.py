"""Which build of the hot path this process serves with: compiled by mypyc, or pure Python.

setup.py compiles HOT_PATH into C extensions at install time when a C compiler is there; Python then
imports each module's extension in preference to its source. Without a compiler the package installs as
pure Python and serves the same. This module tells the two apart (for the start-up log line and
`turnout --version`) and notices a stale build: an editable install keeps the extensions beside the
sources, so a source edited after the build would silently not be what runs.

It imports nothing of the package at module level: setup.py reads HOT_PATH from this file.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from dataclasses import dataclass
from pathlib import Path

# The request path and what it calls per request. The rest runs per snapshot or per admin call.
HOT_PATH = (
    "proxy/http/context.py",
    "proxy/http/head.py",
    "proxy/http/http1.py",
    "proxy/http/exchange.py",
    "proxy/http/upstream.py",
    "proxy/http/downstream.py",
    "turnout/core/routing.py",
    "turnout/core/match.py",
    "turnout/core/hashing.py",
    "turnout/core/stats.py",
    "turnout/core/health.py",
    "turnout/core/model.py",
)


@dataclass(frozen=True, slots=True)
class Build:
    compiled: tuple[str, ...]  # modules served from their C extension
    pure: tuple[str, ...]  # modules served from their Python source
    stale: tuple[str, ...]  # compiled modules whose source changed after they were built

    @property
    def kind(self) -> str:
        if not self.compiled:
            return "pure Python"
        return "compiled (mypyc)" if not self.pure else "partly compiled (mypyc)"

    def describe(self) -> str:
        text = f"hot path: {self.kind}"
        if self.compiled and self.pure:
            text += f"; pure: {', '.join(self.pure)}"
        if self.stale:
            text += f"; STALE, source newer than the build: {', '.join(self.stale)} (reinstall to rebuild)"
        return text


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def current() -> Build:
    compiled, pure, stale = [], [], []
    for path in HOT_PATH:
        name = module_name(path)
        module = importlib.import_module(name)
        file = Path(module.__file__ or "")
        if not any(file.name.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            pure.append(name)
            continue
        compiled.append(name)
        source = file.with_name(file.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > file.stat().st_mtime:
            stale.append(name)
    return Build(tuple(compiled), tuple(pure), tuple(stale))
