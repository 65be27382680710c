"""Layering admin changes over the file (``core.overlay``): exact pins for rollback, resets, and what
an overlay shadows. Documents in, documents out."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from turnout.core import overlay
from turnout.core.errors import ChangeError
from turnout.core.overlay import FLAGS

FILE: dict[str, Any] = {
    "listen": ":1",
    "services": {
        "shop": {"versions": {"v1": ["a:1"], "v2": ["b:1"]}, "split": {"v1": 9, "v2": 1}},
        "blog": {"versions": {"v1": ["c:1"]}, "version": "v1"},
    },
    "flags": {"beta": {"variants": {"on": True}, "default": "on"}},
}


def test_pin_makes_the_merge_equal_the_target_whatever_the_file_says() -> None:
    target = copy.deepcopy(FILE)
    target["services"]["shop"]["rules"] = [{"name": "default", "split": {"v1": 1, "v2": 1}}]
    del target["services"]["shop"]["split"]
    target["services"]["api"] = {"versions": {"v1": ["d:1"]}, "version": "v1"}
    now = copy.deepcopy(FILE)  # the file has moved on: blog gone, a flag added, shop's endpoints moved
    del now["services"]["blog"]
    now["services"]["shop"]["versions"]["v1"] = ["z:9"]
    now["flags"]["extra"] = {"variants": {"x": 1}, "default": "x"}
    pinned = overlay.pin(now, target)
    merged, skipped = overlay.merge(now, pinned)
    assert skipped == []
    assert merged["services"] == target["services"] and merged["flags"] == target["flags"]
    assert sorted(overlay.shadows(pinned)) == ["flags.extra", "services.api", "services.blog", "services.shop"]
    assert overlay.pin(FILE, FILE) == {}  # nothing differs: nothing pinned


def test_changes_to_a_pinned_service_edit_the_pin() -> None:
    pinned = overlay.pin(FILE, {**FILE, "services": {**FILE["services"], "shop": {
        "versions": {"v1": ["a:1"]}, "version": "v1"}}})
    effective = overlay.merge(FILE, pinned)[0]
    rules = [{"name": "default", "version": "v1"}]
    changed = overlay.replace_rules(effective, pinned, "shop", rules)
    changed = overlay.set_version(effective, changed, "shop", "v3", {"endpoints": ["e:1"]})
    shop = overlay.merge(FILE, changed)[0]["services"]["shop"]
    assert shop == {"versions": {"v1": ["a:1"], "v3": {"endpoints": ["e:1"]}}, "rules": rules}


@pytest.mark.parametrize(("services", "flags", "left"), [
    (["shop"], [], {"blog": {"rules": []}, FLAGS: {"beta": None}}),
    ([], ["beta"], {"shop": {"rules": []}, "blog": {"rules": []}}),
    (None, [], {FLAGS: {"beta": None}}),
    (None, None, {}),
])
def test_reset_drops_the_named_changes(services: list[str] | None, flags: list[str] | None,
                                       left: dict[str, Any]) -> None:
    changes: dict[str, Any] = {"shop": {"rules": []}, "blog": {"rules": []}, FLAGS: {"beta": None}}
    assert overlay.reset(changes, services, flags) == left
    assert changes == {"shop": {"rules": []}, "blog": {"rules": []}, FLAGS: {"beta": None}}  # unchanged


@pytest.mark.parametrize(("services", "flags", "field"), [
    (["nope"], [], "services"), ([], ["nope"], "flags"), (None, None, "services")])
def test_reset_of_what_has_no_changes_is_a_409(services: list[str] | None, flags: list[str] | None,
                                               field: str) -> None:
    with pytest.raises(ChangeError) as refused:
        overlay.reset({} if services is None else {"shop": {"rules": []}}, services, flags)
    assert refused.value.status == 409 and refused.value.field == field


def test_shadows_names_each_part() -> None:
    changes: dict[str, Any] = {"shop": {"rules": [], "versions": {"v3": {}}}, "blog": {"service": None},
                               FLAGS: {"beta": {"x": 1}, "old": None}}
    assert overlay.shadows(changes) == {"services.shop": ["rules", "versions.v3"], "services.blog": ["removed"],
                                        "flags.beta": ["flag"], "flags.old": ["removed"]}
