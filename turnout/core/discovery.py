"""Discovery: containers found by a provider (Docker) as a layer of the routing state.

The provider lists the running containers and hands over plain ``Container`` records, a whole
snapshot each time (Traefik's model); ``translate`` turns them into a *discovered layer*, and
``merge`` lays it over the file: file < discovery < admin changes. Labels:

    turnout.service=shop        the service (required)
    turnout.version=v2          the version (required)
    turnout.port=8080           the port it serves on (required)
    turnout.weight=10           optional: the version's weight in the service's default split
    turnout.health.path=/healthz  optional: active health checks for the version
    turnout.host=shop.example   optional: the service's host names (comma-separated), for a service the
                                file does not have (default "*")

A container with bad labels is skipped with a problem naming it and the label, never fatal. A
container that is not running, or whose Docker health check says ``starting`` or ``unhealthy``, is not
an endpoint. Its address: 127.0.0.1 with host networking; otherwise its IP on its first network (or
the one named by ``turnout.network``).

In the merged document a discovered version *replaces* the file's endpoints of that version (the layer
above wins), a discovered version the file lacks is added, and a service the file lacks is created
with the labels' hosts and a default rule splitting by the labels' weights (1 each unless given).
Weights given by labels set the default split of a service the file has too; admin changes still win
over both (they are the overlay).

Pure: records in, documents out.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Container", "Discovered", "merge", "translate"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOST = re.compile(r"^(\*|(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)$")


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    name: str
    labels: Mapping[str, str]
    running: bool = True
    health: str | None = None  # Docker's health status, if the image has a health check
    network_mode: str = "host"
    addresses: Mapping[str, str] = field(default_factory=dict)  # network name -> IP


@dataclass(frozen=True, slots=True)
class Discovered:
    """The discovered layer: per service, its versions' endpoints, label weights and hosts."""

    services: Mapping[str, Mapping[str, Any]]  # service -> {"versions": {v: {...}}, "weights": {...}, "hosts": [...]}
    problems: tuple[str, ...] = ()  # one line per skipped container

    def saved(self) -> dict[str, Any]:
        return {"services": copy.deepcopy(dict(self.services))}

    @classmethod
    def restored(cls, data: Mapping[str, Any] | None) -> Discovered:
        return cls(dict((data or {}).get("services") or {}))


def translate(containers: Iterable[Container], draining: AbstractSet[str] = frozenset()) -> Discovered:
    """``draining``: ids of containers that take no new requests (a rolling replacement retires them):
    still endpoints, listed as draining, so requests in flight finish."""
    services: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for container in sorted(containers, key=lambda c: (c.name, c.id)):
        labels = container.labels
        if "turnout.service" not in labels or not container.running:
            continue
        if container.health in ("starting", "unhealthy"):
            continue  # not ready: no traffic until Docker says it is healthy
        try:
            service, version, endpoint, weight, health_path, hosts = _read(container)
        except ValueError as exc:
            problems.append(f"container {container.name} ({container.id[:12]}): {exc}; skipped")
            continue
        entry = services.setdefault(service, {"versions": {}, "weights": {}, "hosts": []})
        found = entry["versions"].setdefault(version, {"endpoints": []})
        if endpoint not in found["endpoints"]:
            found["endpoints"].append(endpoint)
        if container.id in draining:
            found.setdefault("draining", []).append(endpoint)
        if health_path is not None:
            found["health"] = {"path": health_path}
        if weight is not None:
            entry["weights"][version] = max(weight, entry["weights"].get(version, 0))
        for host in hosts:
            if host not in entry["hosts"]:
                entry["hosts"].append(host)
    return Discovered(services, tuple(problems))


def _read(container: Container) -> tuple[str, str, str, int | None, str | None, list[str]]:
    labels = container.labels
    service, version = labels.get("turnout.service", ""), labels.get("turnout.version", "")
    for key, value in (("turnout.service", service), ("turnout.version", version)):
        if not _NAME.match(value):
            raise ValueError(f"label {key}={value!r} must be 1-63 letters, digits, '_', '.' or '-'")
    port = labels.get("turnout.port", "")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"label turnout.port={port!r} must be a port number 1-65535")
    weight = None
    if "turnout.weight" in labels:
        raw = labels["turnout.weight"]
        if not raw.isdigit() or int(raw) > 1_000_000:
            raise ValueError(f"label turnout.weight={raw!r} must be a whole number 0-1000000")
        weight = int(raw)
    health_path = labels.get("turnout.health.path")
    if health_path is not None and not health_path.startswith("/"):
        raise ValueError(f"label turnout.health.path={health_path!r} must start with '/'")
    hosts = [h.strip().lower() for h in labels.get("turnout.host", "").split(",") if h.strip()]
    bad = [h for h in hosts if not _HOST.match(h)]
    if bad:
        raise ValueError(f"label turnout.host: {bad[0]!r} is not a host name")
    return service, version, f"{_address(container)}:{port}", weight, health_path, hosts


def _address(container: Container) -> str:
    if container.network_mode == "host":
        return "127.0.0.1"
    wanted = container.labels.get("turnout.network")
    if wanted is not None:
        address = container.addresses.get(wanted)
        if not address:
            raise ValueError(f"label turnout.network={wanted!r}: the container has no address on that network")
        return address
    for _, address in sorted(container.addresses.items()):
        if address:
            return address
    raise ValueError("the container has no network address (and does not use host networking)")


def merge(document: Any, discovered: Discovered) -> Any:
    """The file's document with the discovered layer over it (see the module docstring)."""
    if not discovered.services or not isinstance(document, dict):
        return document
    merged = copy.deepcopy(document)
    services = merged.get("services")
    if not isinstance(services, dict):
        services = merged["services"] = {}
    for name, found in discovered.services.items():
        versions = found.get("versions") or {}
        weights = dict(found.get("weights") or {})
        service = services.get(name)
        if not isinstance(service, dict):
            service = services[name] = {
                "hosts": list(found.get("hosts") or []) or ["*"],
                "versions": {},
                "rules": [{"name": "default", "split": {v: weights.get(v, 1) for v in sorted(versions)}}],
            }
        elif weights:
            _set_default_split(service, weights)
        own = service.setdefault("versions", {})
        if isinstance(own, dict):
            for version, entry in versions.items():
                previous = own.get(version)
                replaced = dict(previous) if isinstance(previous, dict) else {}
                replaced["endpoints"] = list(entry["endpoints"])
                replaced.pop("draining", None)
                if entry.get("draining"):
                    replaced["draining"] = list(entry["draining"])
                if "health" in entry:
                    replaced["health"] = {**(replaced.get("health") or {}), **entry["health"]}
                own[version] = replaced
    return merged


def _set_default_split(service: dict[str, Any], weights: dict[str, int]) -> None:
    """Label weights in a file's service: its default rule splits by them (versions the labels do not
    weigh keep the file's weight)."""
    if "rules" in service and isinstance(service["rules"], list) and service["rules"]:
        default = service["rules"][-1]
    else:
        default = service
    if not isinstance(default, dict):
        return
    split = default.get("split")
    if not isinstance(split, dict):
        base = default.pop("version", None)
        split = {base: 1} if isinstance(base, str) else {}
    default["split"] = {**split, **weights}
