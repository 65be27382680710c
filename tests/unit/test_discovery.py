"""Docker discovery's pure part (``core.discovery``): container records to a discovered layer, table-
tested without a daemon, and the layer between the file and admin changes (``Writer.discover``)."""

from __future__ import annotations

from typing import Any

import pytest

from turnout.core import overlay
from turnout.core.discovery import Container, Discovered, merge, translate
from turnout.core.errors import ChangeError
from turnout.core.model import Config
from turnout.core.reader import from_document
from turnout.core.writer import Writer

SHOP = {"turnout.service": "shop", "turnout.version": "v2", "turnout.port": "8080"}


def box(name: str, labels: dict[str, str], **kwargs: Any) -> Container:
    return Container(f"{name}-id-0123456789", name, labels, **kwargs)


@pytest.mark.parametrize(("containers", "services", "problems"), [
    ([box("a", SHOP)], {"shop": {"versions": {"v2": {"endpoints": ["127.0.0.1:8080"]}}, "weights": {}, "hosts": []}},
     []),
    ([box("a", SHOP), box("b", {**SHOP, "turnout.port": "8081", "turnout.weight": "5"})],
     {"shop": {"versions": {"v2": {"endpoints": ["127.0.0.1:8080", "127.0.0.1:8081"]}}, "weights": {"v2": 5},
               "hosts": []}}, []),
    ([box("a", {**SHOP, "turnout.health.path": "/healthz", "turnout.host": "Shop.example, www.shop.example"})],
     {"shop": {"versions": {"v2": {"endpoints": ["127.0.0.1:8080"], "health": {"path": "/healthz"}}},
               "weights": {}, "hosts": ["shop.example", "www.shop.example"]}}, []),
    # Bridge networking: the container's address on its network (or the one it names).
    ([box("a", SHOP, network_mode="bridge", addresses={"bridge": "172.17.0.5"})],
     {"shop": {"versions": {"v2": {"endpoints": ["172.17.0.5:8080"]}}, "weights": {}, "hosts": []}}, []),
    ([box("a", {**SHOP, "turnout.network": "back"}, network_mode="front",
          addresses={"back": "10.1.0.9", "front": "10.2.0.9"})],
     {"shop": {"versions": {"v2": {"endpoints": ["10.1.0.9:8080"]}}, "weights": {}, "hosts": []}}, []),
    # Not ready, not running, not ours: no endpoint, no problem.
    ([box("a", SHOP, health="starting"), box("b", SHOP, health="unhealthy"), box("c", SHOP, running=False),
      box("d", {"app": "other"})], {}, []),
    # Bad labels: skipped, each named; the good one still counts.
    ([box("bad-port", {**SHOP, "turnout.port": "http"}), box("no-version", {"turnout.service": "shop",
                                                                             "turnout.port": "80"}),
      box("bad-weight", {**SHOP, "turnout.weight": "-1"}), box("bad-name", {**SHOP, "turnout.service": "sh op"}),
      box("bad-host", {**SHOP, "turnout.host": "not a host"}), box("bad-path", {**SHOP, "turnout.health.path": "x"}),
      box("no-address", SHOP, network_mode="none"), box("good", SHOP)],
     {"shop": {"versions": {"v2": {"endpoints": ["127.0.0.1:8080"]}}, "weights": {}, "hosts": []}},
     ["bad-host", "bad-name", "bad-path", "bad-port", "bad-weight", "no-address", "no-version"]),
])
def test_containers_become_a_discovered_layer(containers: list[Container], services: dict[str, Any],
                                              problems: list[str]) -> None:
    found = translate(containers)
    assert found.services == services
    assert [p.split(" ", 2)[1] for p in found.problems] == problems
    assert all((p.endswith("; skipped") and "label" in p) or "address" in p for p in found.problems)


FILE: dict[str, Any] = {"listen": "127.0.0.1:0", "services": {"shop": {
    "versions": {"v1": ["127.0.0.1:9001"], "v2": ["127.0.0.1:9002"]},
    "rules": [{"name": "default", "split": {"v1": 90, "v2": 10}, "sticky": {"header": "x-user"}}]}}}


def test_the_layer_replaces_found_versions_adds_new_ones_and_creates_services() -> None:
    layer = translate([box("a", SHOP), box("b", {**SHOP, "turnout.version": "v3", "turnout.port": "7003"}),
                       box("c", {"turnout.service": "api", "turnout.version": "blue", "turnout.port": "7100",
                                 "turnout.host": "api.test"}),
                       box("d", {"turnout.service": "api", "turnout.version": "green", "turnout.port": "7101",
                                 "turnout.weight": "3"})])
    merged = merge(FILE, layer)
    shop = merged["services"]["shop"]
    assert shop["versions"]["v1"] == ["127.0.0.1:9001"]  # the file's, untouched
    assert shop["versions"]["v2"] == {"endpoints": ["127.0.0.1:8080"]}  # found: replaces the file's endpoints
    assert shop["versions"]["v3"] == {"endpoints": ["127.0.0.1:7003"]}  # found, new: added at weight 0
    assert shop["rules"][-1]["split"] == {"v1": 90, "v2": 10}
    assert merged["services"]["api"] == {"hosts": ["api.test"], "versions": {
        "blue": {"endpoints": ["127.0.0.1:7100"]}, "green": {"endpoints": ["127.0.0.1:7101"]}},
        "rules": [{"name": "default", "split": {"blue": 1, "green": 3}}]}
    from_document(merged)  # a valid config
    assert FILE["services"]["shop"]["versions"]["v2"] == ["127.0.0.1:9002"]  # the file's document is not changed
    weighted = merge(FILE, translate([box("a", {**SHOP, "turnout.weight": "50"})]))
    assert weighted["services"]["shop"]["rules"][-1]["split"] == {"v1": 90, "v2": 50}  # labels weigh over the file


def writer_on(document: dict[str, Any]) -> tuple[Writer, list[int]]:
    saved: list[int] = []

    def validate(doc: Any) -> Config:
        return from_document(doc, "t.yaml")

    writer = Writer("t.yaml", lambda: document, validate, lambda state: saved.append(state["generation"]),
                    lambda: 100.0)
    writer.boot(None, "test")
    return writer, saved


def test_discovery_is_a_layer_between_the_file_and_admin_changes() -> None:
    writer, saved = writer_on(FILE)
    first = writer.discover("docker", translate([box("a", SHOP)]))
    assert first is not None and first.what == "discovery: shop" and saved == [1, 2]
    assert writer.desired.document()["services"]["shop"]["versions"]["v2"] == {"endpoints": ["127.0.0.1:8080"]}
    # An admin change on top...
    writer.change("admin", "weights", lambda doc, old: overlay.set_weights(doc, old, "shop", "default",
                                                                            {"v1": 50, "v2": 50}))
    # ...is not undone by the next discovery event, and the event still takes effect below it.
    again = writer.discover("docker", translate([box("a", SHOP), box("b", {**SHOP, "turnout.port": "8081"})]))
    assert again is not None
    document = writer.desired.document()
    assert document["services"]["shop"]["rules"][-1]["split"] == {"v1": 50, "v2": 50}
    assert document["services"]["shop"]["versions"]["v2"]["endpoints"] == ["127.0.0.1:8080", "127.0.0.1:8081"]
    # The same snapshot again changes nothing: no generation.
    generation = writer.generation
    assert writer.discover("docker", translate([box("b", {**SHOP, "turnout.port": "8081"}), box("a", SHOP)])) is None
    assert writer.generation == generation
    # Everything gone: the file's endpoints show through again; the admin's weights still hold.
    writer.discover("docker", Discovered({}))
    document = writer.desired.document()
    assert document["services"]["shop"]["versions"]["v2"] == ["127.0.0.1:9002"]
    assert document["services"]["shop"]["rules"][-1]["split"] == {"v1": 50, "v2": 50}
    # The layer is saved with the state, so a restart boots with what was last found.
    assert writer.desired.saved()["discovered"] == {"services": {}}


def test_a_discovered_layer_the_routing_cannot_take_is_refused_and_changes_nothing() -> None:
    # The admin's rules name v2; discovery of a bad health path cannot break them, but a layer that
    # makes the config invalid (a found endpoint with a bad port is filtered earlier) is refused whole.
    writer, _ = writer_on(FILE)
    before = writer.desired
    bad = Discovered({"shop": {"versions": {"v2": {"endpoints": ["127.0.0.1:99999"]}}, "weights": {}, "hosts": []}})
    with pytest.raises(ChangeError) as refused:
        writer.discover("docker", bad)
    assert refused.value.status == 422 and "versions.v2" in refused.value.field
    assert writer.desired is before
