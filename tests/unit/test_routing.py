"""The pure routing core, table-driven: host and path lookup, rule matching, decisions."""

from __future__ import annotations

import itertools

import pytest

from turnout.core import reader, routing
from turnout.core.match import Request
from turnout.core.routing import normalise_host


def build(text: str) -> routing.RoutingState:
    return routing.build(reader.parse(text, "t.yaml"))


HOSTS = """
services:
  exact: {hosts: [shop.example.com], versions: {v1: [127.0.0.1:1]}, version: v1}
  exact-api: {hosts: [shop.example.com], path_prefix: /api, versions: {v1: [127.0.0.1:2]}, version: v1}
  wild: {hosts: ["*.example.com"], versions: {v1: [127.0.0.1:3]}, version: v1}
  deeper: {hosts: ["*.eu.example.com"], versions: {v1: [127.0.0.1:4]}, version: v1}
  rest: {hosts: ["*"], path_prefix: /only, versions: {v1: [127.0.0.1:5]}, version: v1}
"""


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("shop.example.com", "/", "exact"),
        ("shop.example.com", "/api/x", "exact-api"),
        ("shop.example.com", "/apix", "exact-api"),  # raw string prefix, as Envoy and Traefik
        ("a.example.com", "/", "wild"),
        ("a.b.example.com", "/", "wild"),
        ("x.eu.example.com", "/", "deeper"),
        ("example.com", "/only/here", "rest"),
        ("other.org", "/only", "rest"),
        ("other.org", "/", None),
    ],
)
def test_host_and_path_lookup(host: str, path: str, expected: str | None) -> None:
    found = build(HOSTS).find(host, path)
    assert (found.name if found else None) == expected


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("Shop.Example.COM:8080", "shop.example.com"), ("[::1]:80", "[::1]"), ("a.b.", "a.b"), ("h", "h")],
)
def test_normalise_host(raw: str, normal: str) -> None:
    assert normalise_host(raw) == normal


RULES = """
services:
  s:
    versions: {v1: [127.0.0.1:1], v2: [127.0.0.1:2], v3: [127.0.0.1:3]}
    rules:
      - {name: hdr, match: {headers: {x-beta: "1"}}, version: v2}
      - {name: hdr-prefix, match: {headers: {x-team: {prefix: core-}}}, version: v3}
      - {name: cookie, match: {cookies: {flag: {present: true}}}, version: v2}
      - {name: query, match: {query: {v: {regex: "3|three"}}}, version: v3}
      - {name: path-method, match: {path: {prefix: /admin}, method: [POST, DELETE]}, version: v3}
      - {name: absent, match: {headers: {x-legacy: {absent: true}}, path: /exact}, version: v2}
      - {name: default, split: {v1: 1}}
"""


def request(path: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
            query: str = "") -> Request:
    return Request(method, path, query, headers or {}, "127.0.0.1")


@pytest.mark.parametrize(
    ("req", "rule", "version"),
    [
        (request(headers={"x-beta": "1"}), "hdr", "v2"),
        (request(headers={"x-beta": "2"}), "default", "v1"),
        (request(headers={"x-team": "core-db"}), "hdr-prefix", "v3"),
        (request(headers={"cookie": "a=1; flag=on"}), "cookie", "v2"),
        (request(headers={"cookie": "a=1"}), "default", "v1"),
        (request(query="v=three&x=1"), "query", "v3"),
        (request(query="v=33"), "default", "v1"),  # regex is a full match
        (request(path="/admin/users", method="DELETE"), "path-method", "v3"),
        (request(path="/admin/users", method="GET"), "default", "v1"),
        (request(path="/exact"), "absent", "v2"),
        (request(path="/exact", headers={"x-legacy": ""}), "default", "v1"),
    ],
)
def test_rules_in_order(req: Request, rule: str, version: str) -> None:
    state = build(RULES)
    decision = state.services["s"].decide(req, lambda: 0)
    assert (decision.rule, decision.version.name) == (rule, version)


SPLIT = """
services:
  s:
    versions: {v1: [127.0.0.1:1], v2: [127.0.0.1:2]}
    split: {v1: 900000, v2: 100000}
    sticky: {cookie: uid, assign: true}
"""


def test_sticky_key_decides_and_missing_key_is_assigned() -> None:
    service = build(SPLIT).services["s"]
    fixed = service.decide(request(headers={"cookie": "uid=alice"}), lambda: 0)
    assert fixed.assigned_key is None and fixed.bucket is not None
    again = service.decide(request(headers={"cookie": "uid=alice"}), lambda: 12345)
    assert (again.bucket, again.version.name) == (fixed.bucket, fixed.version.name)
    fresh = service.decide(request(), lambda: 0xABC)
    assert fresh.assigned_key == "0000000000000abc"
    same = service.decide(request(headers={"cookie": f"uid={fresh.assigned_key}"}), lambda: 0)
    assert (same.bucket, same.version.name) == (fresh.bucket, fresh.version.name)


def test_weighted_random_follows_ppm_weights() -> None:
    text = SPLIT.replace("sticky: {cookie: uid, assign: true}", "")
    service = build(text).services["s"]
    counter = itertools.count()
    draws = [service.decide(request(), lambda: next(counter)).version.name for _ in range(1_000_000)]
    assert draws.count("v2") == 100_000  # a full cycle of points hits each version exactly


def test_endpoints_round_robin_within_a_version() -> None:
    state = build("services: {s: {versions: {v1: [127.0.0.1:1, 127.0.0.1:2]}, version: v1}}")
    version = state.services["s"].versions["v1"]
    assert [version.pick().address for _ in range(4)] == ["127.0.0.1:1", "127.0.0.1:2"] * 2  # type: ignore[union-attr]


def test_a_version_without_endpoints_picks_none() -> None:
    state = build("services: {s: {versions: {v1: []}, version: v1}}")
    assert state.services["s"].versions["v1"].pick() is None


def test_reload_rebalances_from_the_previous_snapshot() -> None:
    first = build(SPLIT)
    text = SPLIT.replace("900000", "800000").replace("v2: 100000", "v2: 200000")
    config = reader.parse(text, "t")
    second = routing.build(config, 2, routing.plan(config, first.tables()))
    assert second.generation == first.generation + 1
    old, new = first.tables()[("s", "default")].owners, second.tables()[("s", "default")].owners
    assert all(n == "v2" for o, n in zip(old, new, strict=True) if o == "v2")
    assert sum(1 for o, n in zip(old, new, strict=True) if o != n) == 1000
