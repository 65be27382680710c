"""The stable hash behind sticky routing and flag rollouts: ``bucket = H(salt, key) mod BUCKETS``.

BLAKE2b from the standard library: the same bytes give the same bucket in every process, on every
machine and in every Python version (Python's ``hash()`` is randomised per process, so never that).
The salt is hashed once per snapshot; per request we only copy that state and feed the key.

Flags are the exception to "one hash per salt": a request that carries five injected flags would pay
five hashes. So a flag's bucket is ``permutation(flag salt)[FLAG_KEYS.bucket(key)]``: one hash of
the key serves every flag, and each flag's salt picks its own fixed shuffle of the buckets, which
keeps flags independent of each other (and of routing) just as separate hashes would.
"""

from __future__ import annotations

import functools
import hashlib
from array import array
from typing import Final

from .buckets import BUCKETS

__all__ = ["FLAG_KEYS", "Bucketer", "permutation"]


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


# The one hash of a targeting key that every flag shares (its salt is no flag's: flags permute it).
FLAG_KEYS: Final = Bucketer("turnout flags")


@functools.lru_cache(maxsize=256)
def permutation(salt: str, buckets: int = BUCKETS) -> array[int]:
    """A fixed shuffle of the buckets for ``salt``: buckets sorted by ``H(salt, bucket number)``.

    Built from the hash alone (not ``random``, whose algorithms may change between Python versions),
    so every process agrees. About 5 ms; cached, since a flag keeps its salt across snapshots.
    """
    base = hashlib.blake2b(salt.encode() + b"\0", digest_size=8)

    def rank(bucket: int) -> bytes:
        h = base.copy()
        h.update(bucket.to_bytes(4, "big"))
        return h.digest()

    return array("I", sorted(range(buckets), key=rank))
