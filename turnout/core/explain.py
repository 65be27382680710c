"""Explain a routing decision and preview the effect of a change, without sending any traffic.

Pure: the same snapshot and request give the same answer, and nothing is mutated (the round-robin
position is read, not advanced).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .buckets import BUCKETS, transfers
from .match import Request, compile_condition
from .model import Condition, Match
from .routing import RoutingState, ServiceRoute, normalise_host

__all__ = ["explain", "moves"]


def _checks(match: Match, request: Request) -> list[dict[str, Any]]:
    """Each condition of a match with the value it saw and whether it held."""
    checks: list[dict[str, Any]] = []

    def add(where: str, name: str, condition: Condition, value: str | None) -> None:
        checks.append({"on": where, "name": name, "condition": {condition.kind: condition.value or True},
                       "value": value, "ok": compile_condition(condition)(value)})

    if match.methods is not None:
        checks.append({"on": "method", "name": "", "condition": {"in": sorted(match.methods)},
                       "value": request.method, "ok": request.method in match.methods})
    if match.path is not None:
        add("path", "", match.path, request.path)
    for name, condition in match.headers:
        add("header", name, condition, request.headers.get(name))
    for name, condition in match.cookies:
        add("cookie", name, condition, request.cookies.get(name))
    for name, condition in match.query:
        add("query", name, condition, request.params.get(name))
    return checks


def explain(state: RoutingState, host: str, request: Request) -> dict[str, Any]:
    service = state.find(normalise_host(host), request.path)
    if service is None:
        return {"generation": state.generation, "service": None,
                "why": f"no service for host {host!r} and path {request.path!r}: the proxy answers 404"}
    return {"generation": state.generation, "service": service.name, **_in_service(service, request)}


def _in_service(service: ServiceRoute, request: Request) -> dict[str, Any]:
    tried = []
    for rule, compiled in zip(service.config.rules, service.rules, strict=True):
        checks = _checks(rule.match, request)
        matched = all(check["ok"] for check in checks)
        tried.append({"rule": rule.name, "matched": matched, "checks": checks})
        if not matched:
            continue
        result: dict[str, Any] = {"rule": rule.name, "rules": tried}
        if compiled.version is not None:
            version = compiled.version
            result["why"] = f"rule {rule.name!r} routes to version {version.name!r}"
        else:
            split = compiled.split
            assert split is not None
            key = split.key(request)
            assert rule.split is not None
            total = sum(w for _, w in rule.split.weights)
            shares = {name: f"{100 * w / total:g}%" for name, w in rule.split.weights}
            if key is None:
                result.update(version=None, weights=shares,
                              why=f"split {rule.name!r} without a sticky key: weighted random")
                return result
            bucket = split.bucketer.bucket(key.encode())
            version = split.versions[split.table[bucket]]
            result.update(key=key, bucket=bucket, weights=shares,
                          why=f"sticky key {key!r} hashes to bucket {bucket}, owned by {version.name!r}")
        result["version"] = version.name
        endpoints = [target.address for target in version.endpoints]
        result["endpoints"] = endpoints
        peeked = version.peek()
        result["next_endpoint"] = peeked.address if peeked is not None else None
        if not endpoints:
            result["why"] += "; it has no endpoint: the proxy answers 503"
        return result
    raise AssertionError("the last rule matches every request")


def moves(before: RoutingState, after: RoutingState) -> list[dict[str, Any]]:
    """For each split, how many buckets (and so what share of sticky users) a change would move."""
    old_tables = {key: table.owners for key, table in before.tables().items()}
    new_tables = {key: table.owners for key, table in after.tables().items()}
    report = []
    for key, new in new_tables.items():
        old = old_tables.get(key)
        if old is None:
            report.append({"service": key[0], "rule": key[1], "new_table": True, "owners": dict(Counter(new))})
            continue
        moved = transfers(old, new)
        report.append({
            "service": key[0], "rule": key[1],
            "moved_buckets": sum(moved.values()),
            "moved_percent": round(100 * sum(moved.values()) / BUCKETS, 2),
            "moves": [{"from": a, "to": b, "buckets": n, "percent": round(100 * n / BUCKETS, 2)}
                      for (a, b), n in sorted(moved.items())],
        })
    return report
