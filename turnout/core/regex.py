"""Regular expressions of rules and flags, on RE2: matching takes time linear in the input, whatever
the pattern, so no client header can make a worker spin (Envoy's ``safe_regex`` for the same reason).
``(a+)+$`` against 26 ``a``s and a ``!`` takes seconds in Python's backtracking ``re`` and microseconds
here. Patterns RE2 cannot run in linear time (back-references, look-around) do not compile: the config
or the admin call naming them is refused.

Pure: patterns in, compiled matchers out.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2  # type: ignore[import-untyped]

__all__ = ["RegexError", "compile_pattern", "fullmatch"]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # errors are ours to report (naming the field), not lines on stderr


class RegexError(ValueError):
    """A pattern RE2 does not accept; the message says why."""


def compile_pattern(pattern: str) -> Any:
    """The compiled pattern (``.fullmatch(text)``), or RegexError."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise RegexError(f"{reason} (patterns run on RE2: no back-references or look-around)") from None


@lru_cache(maxsize=1024)
def _cached(pattern: str) -> Any:
    return compile_pattern(pattern)


def fullmatch(pattern: str, text: str) -> bool:
    """Whether all of ``text`` matches ``pattern`` (validated patterns only: compiled once, cached)."""
    return _cached(pattern).fullmatch(text) is not None
