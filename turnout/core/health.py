"""Endpoint health inside a version: passive outlier ejection, active checks, and the retry budget.

Health only ever narrows the endpoints a version picks from; it never sends a request to another
version. When every endpoint of a version is out, that version's share of
traffic is answered 503 by the proxy.

- Passive: ``consecutive_failures`` connect failures or 5xx answers in a row eject an endpoint for
  ``base_ejection`` times (the number of ejections so far + 1), unless that would leave its version
  fewer healthy endpoints than ``min_healthy_percent`` of them, and never none: a version whose
  endpoints would all be ejected keeps using them (Envoy's panic threshold; nginx never marks the only
  server of a group down), so a blip on a one-endpoint version never becomes 30 s of 503. Each
  ejection and each return is one log line. ``enabled: false`` turns passive ejection off.
- Active: a version with ``health`` gets every endpoint checked with ``GET path`` each ``interval``;
  ``unhealthy`` failures in a row take it out, ``healthy`` passes in a row bring it back. New
  endpoints count as up until a check says otherwise, so adding one never causes a gap.

``down`` is the set of addresses the hot path must avoid: a plain set, usually empty.
Pure: time comes in as ``now``; the active checks' I/O is ``proxy.checker``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from .model import HealthCheck, Outlier

__all__ = ["Health", "RetryBudget"]

log = logging.getLogger("turnout")


class _Endpoint:
    __slots__ = ("ejected_until", "ejections", "fails", "failures", "held", "passes", "unhealthy", "where")

    def __init__(self) -> None:
        self.failures = 0  # real requests that failed in a row
        self.ejections = 0
        self.ejected_until = 0.0  # 0: not ejected
        self.held = False  # would be ejected, kept for its version's sake (logged once per streak)
        self.where = ""
        self.unhealthy = False  # by active checks
        self.passes = 0
        self.fails = 0


class Health:
    def __init__(self) -> None:
        self.endpoints: dict[str, _Endpoint] = {}
        self.down: set[str] = set()

    def _of(self, address: str) -> _Endpoint:
        state = self.endpoints.get(address)
        if state is None:
            state = self.endpoints[address] = _Endpoint()
        return state

    def status(self, address: str) -> str:
        state = self.endpoints.get(address)
        if state is None:
            return "up"
        if state.unhealthy:
            return "failing checks"
        return "ejected" if state.ejected_until else "up"

    def success(self, address: str) -> None:
        state = self.endpoints.get(address)
        if state is not None:
            state.failures = 0
            state.held = False

    def failure(self, address: str, siblings: Iterable[str], outlier: Outlier, now: float, where: str = "") -> bool:
        """Count a failed request; True if this ejected the endpoint. ``where``: its service and version,
        for the log line."""
        if not outlier.enabled:
            return False
        state = self._of(address)
        state.failures += 1
        if state.ejected_until or state.failures < outlier.consecutive_failures:
            return False
        siblings = list(siblings)
        healthy_after = sum(1 for other in siblings if other != address and other not in self.down)
        needed = max(1, math.ceil(len(siblings) * outlier.min_healthy_percent / 100))
        if healthy_after < needed:
            if not state.held:
                state.held = True
                log.warning("%s: endpoint %s keeps failing (%d in a row) but stays in: ejecting it would leave %d "
                            "of %d endpoints healthy (outlier.min_healthy_percent %d, and never none)", where,
                            address, state.failures, healthy_after, len(siblings), outlier.min_healthy_percent)
            return False
        state.ejections += 1
        seconds = outlier.base_ejection * state.ejections
        state.ejected_until = now + seconds
        state.failures, state.held, state.where = 0, False, where
        self.down.add(address)
        log.warning("%s: endpoint %s ejected for %gs: %d connect failures, timeouts or 5xx answers in a row",
                    where, address, seconds, outlier.consecutive_failures)
        return True

    def checked(self, address: str, ok: bool, check: HealthCheck) -> None:
        """One active check's result."""
        state = self._of(address)
        if ok:
            state.passes, state.fails = state.passes + 1, 0
            if state.unhealthy and state.passes >= check.healthy:
                state.unhealthy = False
                log.info("%s passes its health checks again", address)
                self._refresh(address, state)
        else:
            state.fails, state.passes = state.fails + 1, 0
            if not state.unhealthy and state.fails >= check.unhealthy:
                state.unhealthy = True
                log.warning("%s fails its health checks: out of rotation", address)
                self._refresh(address, state)

    def tick(self, now: float) -> None:
        """Ejections that have run out end here."""
        for address in list(self.down):
            state = self.endpoints[address]
            if state.ejected_until and state.ejected_until <= now:
                state.ejected_until = 0.0
                self._refresh(address, state)
                log.info("%s: endpoint %s is back after its ejection (%d so far)", state.where, address,
                         state.ejections)

    def _refresh(self, address: str, state: _Endpoint) -> None:
        if state.unhealthy or state.ejected_until:
            self.down.add(address)
        else:
            self.down.discard(address)


class RetryBudget:
    """Retries in flight may be at most ``percent`` % of the requests in flight (and always three),
    as Envoy's retry budget: one bad endpoint among three needs a retry for every third request and
    gets it, while a whole version failing under load cannot double the load by retrying."""

    def __init__(self) -> None:
        self.retries = 0  # retried requests not finished yet

    def allow(self, percent: int, in_flight: int) -> bool:
        if self.retries >= max(3, in_flight * percent // 100):
            return False
        self.retries += 1
        return True

    def finished(self, retries: int) -> None:
        self.retries -= retries
