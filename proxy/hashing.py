"""The stable hash behind sticky routing and flag rollouts: ``bucket = H(salt, key) mod BUCKETS``.

BLAKE2b from the standard library: the same bytes give the same bucket in every process, on every
machine and in every Python version (Python's ``hash()`` is randomised per process, so never that).
The salt is hashed once per snapshot; per request we only copy that state and feed the key.
"""

from __future__ import annotations

import hashlib

from .buckets import BUCKETS

__all__ = ["Bucketer"]


class Bucketer:
    """Maps keys to buckets for one salt (a service's, or a flag's)."""

    __slots__ = ("_base", "buckets", "salt")

    def __init__(self, salt: str, buckets: int = BUCKETS) -> None:
        self.salt = salt
        self.buckets = buckets
        # The NUL keeps ("ab", "c") and ("a", "bc") apart.
        self._base = hashlib.blake2b(salt.encode() + b"\0", digest_size=8)

    def bucket(self, key: bytes) -> int:
        h = self._base.copy()
        h.update(key)
        return int.from_bytes(h.digest(), "big") % self.buckets
