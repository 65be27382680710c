"""The writer's desired state (``turnout.core.desired``): generations numbered and planned once, since when
each override holds, exact rollback, and a state-file round trip. No I/O, time passed in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from turnout.core import overlay, routing
from turnout.core.desired import HISTORY, Desired
from turnout.core.reader import from_document

FILE: dict[str, Any] = {"listen": "127.0.0.1:0", "services": {"shop": {
    "versions": {"v1": ["127.0.0.1:1"], "v2": ["127.0.0.1:2"]}, "split": {"v1": 9, "v2": 1},
    "sticky": {"header": "x-user"}}}}


def step(desired: Desired, changes: overlay.Overlay, at: float, **kwargs: Any) -> Desired:
    document = desired.document(changes)
    return desired.commit("test", "step", changes, from_document(document, "t.yaml"), document, at, **kwargs)[0]


def weights(desired: Desired, v1: int, v2: int) -> overlay.Overlay:
    return overlay.set_weights(desired.document(), desired.overlay, "shop", "default", {"v1": v1, "v2": v2})


def test_commit_numbers_plans_and_records_once() -> None:
    first = step(Desired(FILE), {}, 100.0)
    assert first.generation == 1 and [e.generation for e in first.history] == [1] and first.overrides() == {}
    second = step(first, weights(first, 1, 1), 200.0)
    assert second.generation == 2 and second.history[-1].at == 200.0
    assert second.tables == routing.plan(from_document(second.document(), "t"), first.tables)
    assert second.overrides() == {"services.shop": {"parts": ["rules"], "since": 2}}
    third = step(second, second.overlay, 300.0)  # the same overlay: the override still dates from 2
    assert third.overrides()["services.shop"]["since"] == 2
    assert first.generation == 1 and len(first.history) == 1  # values, never changed in place


def test_rollback_overlay_restores_routing_and_tables_exactly() -> None:
    state = step(Desired(FILE), {}, 1.0)
    one = state
    for v2 in (3, 5, 2):
        state = step(state, weights(state, 10 - v2, v2), 2.0)
    pinned, tables = state.rollback_overlay(1)
    back = step(state, pinned, 3.0, plan_from=tables)
    assert back.document()["services"] == one.document()["services"]
    assert back.tables == one.tables


def test_history_is_bounded_and_survives_the_state_file() -> None:
    state = Desired(FILE)
    for i in range(HISTORY + 5):
        state = step(state, weights(state, 100 - i, i + 1) if i % 2 else {}, float(i))
    assert len(state.history) == HISTORY and state.history[0].generation == 6
    again = Desired.restored(json.loads(json.dumps(state.saved())), FILE)
    assert again == state


def test_state_file_round_trip_and_cleanup_of_unfinished_writes(tmp_path: Path) -> None:
    from turnout.io import statefile

    path = tmp_path / "x.state.json"
    assert statefile.read(path) is None
    left = tmp_path / ".x.state.json.123.tmp"
    left.write_text("half")
    assert statefile.clean(path) == [left] and not left.exists()
    state = step(Desired(FILE), {}, 1.0)
    statefile.write(path, state.saved())
    assert Desired.restored(statefile.read(path), FILE) == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.state.json"]
