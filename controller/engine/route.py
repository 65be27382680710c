"""What a rollout asks of a service's routing, and the rules that say it.

A rollout owns two things of its service: the weights of the service's default split (its last rule)
and the cohort rules it puts ahead of the user's own (``setHeaderRoute``, a blue/green preview). Both
are a ``Route``; ``rules_for`` writes a route into the service's rules, leaving every other rule as the
user wrote it. The cohort rules are named ``rollout-<name>`` so that they can be found and removed
again, whatever happened in between (a restart, a reload of the file).

Pure: documents in, documents out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["COHORT_PREFIX", "PPM", "Route", "rules_for", "stable_of"]

PPM = 1_000_000  # weights are parts per million: a 0.01 % canary is 100
COHORT_PREFIX = "rollout-"


@dataclass(frozen=True, slots=True)
class Route:
    weights: tuple[tuple[str, int], ...]  # the default split, version -> ppm (a warm version may have 0)
    cohorts: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # (name, match), routed to ``target``
    target: str = ""  # the version the cohorts reach

    def weight(self, version: str) -> int:
        return dict(self.weights).get(version, 0)

    def share(self, version: str, other: str) -> float | None:
        """``version``'s expected share of the split requests that reach either of the two."""
        mine, theirs = self.weight(version), self.weight(other)
        return mine / (mine + theirs) if mine + theirs else None

    def saved(self) -> dict[str, Any]:
        return {"weights": [list(pair) for pair in self.weights],
                "cohorts": [[name, copy.deepcopy(dict(match))] for name, match in self.cohorts], "target": self.target}

    @classmethod
    def restored(cls, data: Mapping[str, Any]) -> Route:
        return cls(tuple((str(v), int(w)) for v, w in data["weights"]),
                   tuple((str(n), dict(m)) for n, m in data.get("cohorts", [])), str(data.get("target", "")))


def rules_for(rules: list[Any], route: Route) -> list[Any]:
    """The service's rules with ``route`` in force: the rollout's cohort rules first (earlier ones of
    any rollout removed), then the user's rules, the last one splitting by the route's weights (its
    stickiness kept)."""
    mine = [copy.deepcopy(rule) for rule in rules
            if not (isinstance(rule, dict) and str(rule.get("name", "")).startswith(COHORT_PREFIX))]
    if not mine or not isinstance(mine[-1], dict):
        return mine  # nothing to split: validation of the whole config says what is wrong
    default = mine[-1]
    default.pop("version", None)
    default["split"] = {version: weight for version, weight in route.weights}
    cohorts = [{"name": COHORT_PREFIX + name, "match": copy.deepcopy(dict(match)), "version": route.target}
               for name, match in route.cohorts]
    return [*cohorts, *mine]


def stable_of(rules: list[Any]) -> str | None:
    """The version a service serves now: its default rule's version, or the heaviest of its split
    (the first of equals). None if the rules have no default to read."""
    default = rules[-1] if rules and isinstance(rules[-1], dict) else None
    if default is None:
        return None
    if isinstance(default.get("version"), str):
        return str(default["version"])
    split = default.get("split")
    if not isinstance(split, dict) or not split:
        return None
    return str(max(split, key=lambda version: (split[version], -list(split).index(version))))
