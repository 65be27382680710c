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
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

__all__ = ["BUCKETS", "Table", "TableError", "Tables", "check", "decode", "decode_tables", "encode", "encode_tables",
           "plan", "rebalance", "rebalance_table", "target_counts", "transfers"]

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


@dataclass(frozen=True, slots=True)
class Table:
    """Who owns each bucket, and when each was acquired (the rebalance that gave it to its owner).

    The acquisition order makes shrinking last-in, first-out: a version that must give buckets back
    gives its newest first, so 10 % -> 20 % -> 10 % returns exactly the users who joined at 20 %.
    """

    owners: tuple[str, ...]
    order: tuple[int, ...]


def rebalance_table(previous: Table | None, weights: Mapping[str, int], buckets: int = BUCKETS) -> Table:
    """The next table for ``weights``: minimal moves, only from losers to gainers, newest given up first.

    Versions that must shrink release their most recently acquired buckets (ties: highest-numbered);
    released and ownerless buckets go, lowest-numbered first, to versions that must grow, in version
    order, stamped with this rebalance's number. A bucket whose owner is not in ``weights`` (a removed
    version) counts as ownerless.
    """
    if previous is None:
        table: list[str | None] = [None] * buckets
        order = [0] * buckets
    else:
        if len(previous.owners) != buckets or len(previous.order) != buckets:
            raise ValueError(f"table has {len(previous.owners)} buckets, expected {buckets}")
        table = [owner if owner in weights else None for owner in previous.owners]
        order = list(previous.order)
    stamp = max(order, default=0) + 1
    have = Counter(owner for owner in table if owner is not None)
    want = target_counts(weights, have, buckets)
    for name in weights:
        surplus = have[name] - want[name]
        if surplus > 0:
            mine = sorted((i for i, owner in enumerate(table) if owner == name), key=lambda i: (order[i], i))
            for index in mine[-surplus:]:
                table[index] = None
    free = (index for index, owner in enumerate(table) if owner is None)
    for name in weights:
        for _ in range(want[name] - have[name]):
            index = next(free)
            table[index] = name
            order[index] = stamp
    owners = tuple(owner for owner in table if owner is not None)
    assert len(owners) == buckets, "every bucket has an owner after rebalancing"
    return Table(owners, tuple(order))


Tables = dict[tuple[str, str], Table]  # every table of a snapshot, by (owner key, part)


class TableError(ValueError):
    """A table that does not fit the weights it is meant to serve (a receiver refuses the snapshot)."""


def plan(previous: Mapping[tuple[str, str], Table], wanted: Mapping[tuple[str, str], Mapping[str, int]],
         buckets: int = BUCKETS) -> Tables:
    """The writer's step, and the only place tables change: every wanted table rebalanced from its
    previous one (a new key starts afresh; a key no longer wanted is dropped). Receivers never call
    this: they apply the tables the writer computed (``check``)."""
    return {key: rebalance_table(previous.get(key), weights, buckets) for key, weights in wanted.items()}


def check(tables: Mapping[tuple[str, str], Table], wanted: Mapping[tuple[str, str], Mapping[str, int]],
          buckets: int = BUCKETS) -> None:
    """Raise ``TableError`` unless ``tables`` has a table for every wanted key, each owned only by
    versions that have weight, with the counts those weights give (``target_counts``)."""
    for key, weights in wanted.items():
        table = tables.get(key)
        where = "/".join(key)
        if table is None:
            raise TableError(f"no bucket table for {where}")
        if len(table.owners) != buckets or len(table.order) != buckets:
            raise TableError(f"the table of {where} has {len(table.owners)} buckets, expected {buckets}")
        have = Counter(table.owners)
        if have != Counter({name: count for name, count in target_counts(weights, have, buckets).items() if count}):
            raise TableError(f"the table of {where} does not match its weights "
                             f"({', '.join(f'{name}={w}' for name, w in weights.items())})")


def rebalance(
    owners: Sequence[str | None] | None, weights: Mapping[str, int], buckets: int = BUCKETS
) -> tuple[str, ...]:
    """``rebalance_table`` for a table whose acquisition order is unknown (all equal): the owners only."""
    if owners is None:
        return rebalance_table(None, weights, buckets).owners
    previous = Table(tuple(owner if owner is not None else "" for owner in owners), (0,) * len(owners))
    return rebalance_table(previous, weights, buckets).owners


def transfers(old: Sequence[str], new: Sequence[str]) -> Counter[tuple[str, str]]:
    """How many buckets moved from which version to which (for dry runs and tests)."""
    return Counter((a, b) for a, b in zip(old, new, strict=True) if a != b)


def encode(owners: Sequence[Any]) -> list[list[Any]]:
    """A column of a table as runs, ``[[value, count], ...]``: compact and readable in the state file."""
    runs: list[list[Any]] = []
    for owner in owners:
        if runs and runs[-1][0] == owner:
            runs[-1][1] += 1
        else:
            runs.append([owner, 1])
    return runs


def decode(runs: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    return tuple(value for value, count in runs for _ in range(int(count)))


def encode_tables(tables: Mapping[tuple[str, str], Table]) -> list[Any]:
    """A set of tables as plain data (state file, wire messages)."""
    return [[owner, part, encode(table.owners), encode(table.order)] for (owner, part), table in tables.items()]


def decode_tables(encoded: Sequence[Sequence[Any]]) -> Tables:
    return {(owner, part): Table(decode(owners), decode(order)) for owner, part, owners, order in encoded}
