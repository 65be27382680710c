"""The routing state as the admin APIs show it: the config's own vocabulary, plus what only the running
processes know (the generation each serves, how many buckets each version owns, endpoint health, what
admin changes override). Pure: snapshots in, JSON-able data out."""

from __future__ import annotations

from collections import Counter
from typing import Any

from turnout.core.model import Condition, Match, Sticky
from turnout.core.routing import RoutingState

__all__ = ["describe", "describe_flags"]



def describe(state: RoutingState, snapshots: list[dict[str, Any]],
             overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The routing state in the config's own vocabulary, plus what only the running proxy knows: the
    generation each worker serves, how many buckets each version owns, endpoint health (an endpoint
    any worker holds out counts as out), and which services and flags admin changes override (parts
    and since which generation), so that what hides the file is never silent."""
    overrides = overrides or {}
    health: dict[str, str] = {}
    for snapshot in snapshots:
        for address, status in snapshot.get("health", {}).items():
            if status != "up":
                health[address] = status
    services = {}
    for service in state.config.services:
        route = state.services[service.name]
        rules = []
        for rule, compiled in zip(service.rules, route.rules, strict=True):
            entry: dict[str, Any] = {"name": rule.name}
            if not rule.match.is_empty:
                entry["match"] = _match(rule.match)
            if rule.version is not None:
                entry["version"] = rule.version
            elif rule.split is not None and compiled.split is not None:
                entry["split"] = dict(rule.split.weights)
                entry["sticky"] = _sticky(rule.split.sticky)
                entry["buckets"] = dict(Counter(compiled.split.owners))
            rules.append(entry)
        services[service.name] = {
            "hosts": list(service.hosts),
            "path_prefix": service.path_prefix,
            "versions": {v.name: {"endpoints": [str(e) for e in v.endpoints],
                                  "health": {**{target.address: health.get(target.address, "up")
                                                for target in route.versions[v.name].endpoints},
                                             **{target.address: "draining"
                                                for target in route.versions[v.name].draining}}}
                         for v in service.versions},
            "rules": rules,
        }
        if f"services.{service.name}" in overrides:
            services[service.name]["overridden"] = overrides[f"services.{service.name}"]
    flags = describe_flags(state)
    for key, flag in flags.items():
        if f"flags.{key}" in overrides:
            flag["overridden"] = overrides[f"flags.{key}"]
    return {
        "generation": state.generation,
        "flags": flags,
        "overridden": overrides,
        "workers": [{"pid": s.get("pid"), "generation": s["generation"], "connections": s["connections"]}
                    for s in snapshots],
        "services": services,
    }


def describe_flags(state: RoutingState) -> dict[str, Any]:
    """Each flag as configured, with how many of its rollout buckets each variant owns now."""
    described = {}
    for flag in state.config.flags:
        compiled = state.flags.flags[flag.key]
        entry: dict[str, Any] = {"enabled": flag.enabled, "default": flag.default,
                                 "variants": dict(flag.variants), "rules": len(flag.rules)}
        if flag.rollout is not None and compiled.rollout is not None:
            entry["rollout"] = {variant: share / 1000 for variant, share in flag.rollout}
            entry["buckets"] = dict(Counter(compiled.rollout.table.owners))
        described[flag.key] = entry
    return described


def _condition(condition: Condition) -> Any:
    if condition.kind in ("present", "absent"):
        return {condition.kind: True}
    return {condition.kind: condition.value}


def _match(match: Match) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in ("headers", "cookies", "query"):
        pairs = getattr(match, field)
        if pairs:
            out[field] = {name: _condition(condition) for name, condition in pairs}
    if match.path is not None:
        out["path"] = _condition(match.path)
    if match.methods is not None:
        out["method"] = sorted(match.methods)
    return out


def _sticky(sticky: Sticky) -> Any:
    if sticky.kind in ("none", "client_ip"):
        return sticky.kind
    out: dict[str, Any] = {sticky.kind: sticky.name}
    if sticky.assign:
        out.update(assign=True, max_age=sticky.max_age)
    return out
