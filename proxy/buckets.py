"""Bucket tables: which version owns each sticky bucket.

A sticky request is hashed to one of ``BUCKETS`` buckets (see ``hashing``); the table says which version
owns that bucket. Tables are never built from scratch once they exist: a weight change *rebalances* the
previous table, moving the fewest buckets possible and only from versions that lose share to versions
that gain it. That is what keeps a user who is on the canary at 10 % on it at 20 %, and why, with three
versions, nobody moves who does not have to. Interval hashing (cumulative weight ranges) cannot promise
this for three or more versions, which is why the table exists at all.

Pure: no I/O, no clock, no randomness. The same inputs give the same table in every process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

__all__ = ["BUCKETS", "decode", "encode", "rebalance", "target_counts", "transfers"]

# 10,000 buckets: one bucket is 0.01 %, the smallest canary the design requires a sticky split to express.
BUCKETS = 10_000


def target_counts(
    weights: Mapping[str, int], current: Mapping[str, int], buckets: int = BUCKETS
) -> dict[str, int]:
    """How many buckets each version should own for ``weights``.

    Every version gets ``floor(q)`` or ``ceil(q)`` of its exact quota ``q`` (so shares are within one
    bucket of the weights). The buckets left over by rounding go first to versions that already own
    more than ``floor(q)``: each such grant saves one move. Ties are broken by the larger remainder,
    then by version order, so the result is deterministic.

    A version whose share did not change already owns ``floor(q)`` or ``ceil(q)``; it can only lose a
    bucket here if the leftovers were too few for every holder, and then no version gains one by
    rounding, so no bucket ever moves between two versions whose shares are both unchanged.
    """
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("weights must have a positive sum")
    quota = {name: Fraction(w * buckets, total) for name, w in weights.items()}
    counts = {name: int(q) for name, q in quota.items()}
    leftover = buckets - sum(counts.values())
    order = list(weights)
    ranked = sorted(
        (name for name in order if quota[name] != counts[name]),
        key=lambda n: (
            current.get(n, 0) <= counts[n],  # holders first (False sorts before True)
            -(quota[n] - counts[n]),
            order.index(n),
        ),
    )
    for name in ranked[:leftover]:
        counts[name] += 1
    return counts


def rebalance(
    owners: Sequence[str | None] | None, weights: Mapping[str, int], buckets: int = BUCKETS
) -> tuple[str, ...]:
    """The new owner of every bucket, given the previous owners (or None for a new table).

    Versions that must shrink release their highest-numbered buckets; released and ownerless buckets
    go, lowest-numbered first, to versions that must grow, in version order. A bucket whose owner
    is not in ``weights`` (a removed version) counts as ownerless.
    """
    previous: list[str | None] = list(owners) if owners is not None else [None] * buckets
    if len(previous) != buckets:
        raise ValueError(f"table has {len(previous)} buckets, expected {buckets}")
    table = [owner if owner in weights else None for owner in previous]
    have = Counter(owner for owner in table if owner is not None)
    want = target_counts(weights, have, buckets)
    surplus = {name: have[name] - want[name] for name in weights if have[name] > want[name]}
    for index in range(buckets - 1, -1, -1):
        owner = table[index]
        if owner is not None and surplus.get(owner, 0) > 0:
            surplus[owner] -= 1
            table[index] = None
    deficits = [(name, want[name] - have[name]) for name in weights if want[name] > have[name]]
    free = (index for index, owner in enumerate(table) if owner is None)
    for name, missing in deficits:
        for _ in range(missing):
            table[next(free)] = name
    result = tuple(owner for owner in table if owner is not None)
    assert len(result) == buckets, "every bucket has an owner after rebalancing"
    return result


def transfers(old: Sequence[str], new: Sequence[str]) -> Counter[tuple[str, str]]:
    """How many buckets moved from which version to which (for dry runs and tests)."""
    return Counter((a, b) for a, b in zip(old, new, strict=True) if a != b)


def encode(owners: Sequence[str]) -> list[list[Any]]:
    """A table as runs, ``[[version, count], ...]``: compact and readable in the state file."""
    runs: list[list[Any]] = []
    for owner in owners:
        if runs and runs[-1][0] == owner:
            runs[-1][1] += 1
        else:
            runs.append([owner, 1])
    return runs


def decode(runs: Sequence[Sequence[Any]]) -> tuple[str, ...]:
    return tuple(str(owner) for owner, count in runs for _ in range(int(count)))
