"""Bucket-table properties: minimal moves, only from losers to gainers, shares within
one bucket of the weights, and the same table in every process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.core.buckets import (
    BUCKETS,
    Table,
    TableError,
    check,
    plan,
    rebalance,
    rebalance_table,
    target_counts,
    transfers,
)
from turnout.core.hashing import Bucketer, permutation

NAMES = ["v1", "v2", "v3", "v4", "v5"]

weights_st = st.lists(st.integers(0, 1_000_000), min_size=1, max_size=5).filter(lambda ws: sum(ws) > 0)


def as_weights(values: list[int]) -> dict[str, int]:
    return {NAMES[i]: w for i, w in enumerate(values)}


def shares_ok(table: tuple[str, ...], weights: dict[str, int]) -> bool:
    counts = Counter(table)
    total = sum(weights.values())
    return all(abs(counts[name] - Fraction(w * BUCKETS, total)) < 1 for name, w in weights.items())


@settings(max_examples=150, deadline=None)
@given(weights_st)
def test_new_table_shares_are_within_one_bucket(values: list[int]) -> None:
    weights = as_weights(values)
    table = rebalance(None, weights)
    assert len(table) == BUCKETS
    assert shares_ok(table, weights)


@settings(max_examples=150, deadline=None)
@given(weights_st, weights_st)
def test_rebalance_moves_the_minimum_and_only_from_losers_to_gainers(before: list[int], after: list[int]) -> None:
    old_weights, new_weights = as_weights(before), as_weights(after)
    old = rebalance(None, old_weights)
    new = rebalance(old, new_weights)
    assert shares_ok(new, new_weights)
    old_counts, new_counts = Counter(old), Counter(new)
    # Minimum possible: every bucket a version must gain has to move, and no more do.
    must_gain = sum(max(0, new_counts[n] - old_counts[n]) for n in new_weights)
    moved = transfers(old, new)
    assert sum(moved.values()) == must_gain
    for (source, dest), _ in moved.items():
        assert new_counts[source] < old_counts[source], "only versions that lose buckets give them up"
        assert new_counts[dest] > old_counts[dest], "only versions that gain buckets receive them"


@settings(max_examples=150, deadline=None)
@given(weights_st, weights_st)
def test_counts_chosen_are_the_cheapest_valid_ones(before: list[int], after: list[int]) -> None:
    """Among all tables within one bucket of the new weights, the rebalance picks one with fewest moves."""
    old_weights, new_weights = as_weights(before), as_weights(after)
    old_counts = Counter(rebalance(None, old_weights))
    chosen = target_counts(new_weights, old_counts)
    total = sum(new_weights.values())
    floors = {n: (w * BUCKETS) // total for n, w in new_weights.items()}
    leftover = BUCKETS - sum(floors.values())
    fractional = [n for n, w in new_weights.items() if (w * BUCKETS) % total]
    # Cheapest: give each leftover bucket to a version that already holds more than its floor.
    holders = [n for n in fractional if old_counts[n] > floors[n]]
    best_gain = sum(max(0, floors[n] - old_counts[n]) for n in new_weights) + max(0, leftover - len(holders))
    assert sum(max(0, chosen[n] - old_counts[n]) for n in new_weights) == best_gain


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=3, max_size=5), st.data())
def test_no_bucket_moves_between_versions_whose_share_did_not_change(values: list[int], data: st.DataObject) -> None:
    """Shift weight between two versions only; the others keep every bucket they had."""
    weights = as_weights(values)
    names = list(weights)
    giver, taker = data.draw(st.sampled_from(names)), data.draw(st.sampled_from(names))
    amount = data.draw(st.integers(0, weights[giver]))
    changed = dict(weights)
    changed[giver] -= amount
    changed[taker] += amount
    if sum(changed.values()) == 0:
        return
    old = rebalance(None, weights)
    new = rebalance(old, changed)
    untouched = {n for n in names if n not in (giver, taker)}
    for (source, dest), _ in transfers(old, new).items():
        assert not (source in untouched and dest in untouched)


def test_canary_users_stay_on_the_canary_as_it_grows() -> None:
    table = rebalance(None, {"v1": 90, "v2": 10})
    on_canary = {i for i, owner in enumerate(table) if owner == "v2"}
    for percent in (20, 50, 90, 100):
        table = rebalance(table, {"v1": 100 - percent, "v2": percent})
        now_on = {i for i, owner in enumerate(table) if owner == "v2"}
        assert on_canary <= now_on
        on_canary = now_on


def test_removed_version_buckets_go_to_the_others() -> None:
    table = rebalance(None, {"v1": 50, "v2": 25, "v3": 25})
    after = rebalance(table, {"v1": 50, "v2": 50})
    assert Counter(after) == {"v1": 5000, "v2": 5000}
    assert all(a == b for a, b in zip(table, after, strict=True) if a == "v1")


def test_one_bucket_is_a_hundredth_of_a_percent() -> None:
    table = rebalance(None, {"stable": 999_900, "canary": 100})
    assert Counter(table)["canary"] == 1


SCRIPT = """
import hashlib
from turnout.core.buckets import rebalance
from turnout.core.hashing import Bucketer, permutation
t = rebalance(None, {"v1": 70, "v2": 20, "v3": 10})
t = rebalance(t, {"v1": 50, "v2": 30, "v3": 20})
b = Bucketer("shop")
keys = [b.bucket(f"user-{i}".encode()) for i in range(2000)]
print(hashlib.sha256(("|".join(t) + repr(keys) + repr(list(permutation("flag")))).encode()).hexdigest())
"""


def test_tables_and_hashes_are_identical_in_separate_processes() -> None:
    digests = {
        subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout
        for seed in (1, 2)
    }
    assert len(digests) == 1
    t = rebalance(rebalance(None, {"v1": 70, "v2": 20, "v3": 10}), {"v1": 50, "v2": 30, "v3": 20})
    b = Bucketer("shop")
    keys = [b.bucket(f"user-{i}".encode()) for i in range(2000)]
    shuffle = list(permutation("flag"))
    assert sorted(shuffle) == list(range(BUCKETS)) and shuffle != sorted(shuffle)
    assert digests == {hashlib.sha256(("|".join(t) + repr(keys) + repr(shuffle)).encode()).hexdigest() + "\n"}


def test_hash_spreads_keys_evenly() -> None:
    b = Bucketer("salt")
    counts = Counter(b.bucket(f"k{i}".encode()) * 10 // BUCKETS for i in range(20_000))
    assert all(1800 < c < 2200 for c in counts.values())  # ten deciles of 2,000 ± 10 %
    assert Bucketer("a").bucket(b"x") == Bucketer("a").bucket(b"x")
    assert [Bucketer("a").bucket(f"{i}".encode()) for i in range(50)] != \
        [Bucketer("b").bucket(f"{i}".encode()) for i in range(50)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=6))
def test_shrinking_gives_back_the_newest_buckets_first(steps: list[int]) -> None:
    """A canary walked up and back down the same steps returns, step by step, to the same users."""
    table = rebalance_table(None, {"stable": 100, "canary": 0})
    shares = sorted(set(steps))
    history = []
    for share in shares:  # up
        history.append(table)
        table = rebalance_table(table, {"stable": 100 - share * 10, "canary": share * 10})
    for share, earlier in zip(reversed(shares[:-1]), reversed(history[1:]), strict=True):  # and down
        table = rebalance_table(table, {"stable": 100 - share * 10, "canary": share * 10})
        assert table.owners == earlier.owners


def test_table_with_unknown_order_behaves_as_before() -> None:
    owners = rebalance(None, {"a": 50, "b": 50})
    unordered = Table(owners, (0,) * BUCKETS)
    assert rebalance_table(unordered, {"a": 80, "b": 20}).owners == rebalance(owners, {"a": 80, "b": 20})


def test_plan_rebalances_every_wanted_table_and_check_accepts_only_fitting_ones() -> None:
    first = plan({}, {("s", "r"): {"a": 9, "b": 1}})
    second = plan(first, {("s", "r"): {"a": 8, "b": 2}, ("t", "r"): {"x": 1}})
    moved = transfers(first[("s", "r")].owners, second[("s", "r")].owners)
    assert moved == {("a", "b"): 1000}
    check(second, {("s", "r"): {"a": 8, "b": 2}, ("t", "r"): {"x": 1}})
    assert plan(second, {("s", "r"): {"a": 8, "b": 2}}) == {("s", "r"): second[("s", "r")]}  # a fixed point
    with pytest.raises(TableError, match="no bucket table for t/r"):
        check(first, {("s", "r"): {"a": 9, "b": 1}, ("t", "r"): {"x": 1}})
    with pytest.raises(TableError, match="does not match its weights"):
        check(first, {("s", "r"): {"a": 8, "b": 2}})
