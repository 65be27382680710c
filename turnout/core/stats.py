"""Per-worker request statistics, kept as plain integers in the hot path and turned into Prometheus
metrics only when scraped.

Counting through prometheus-client on every request would cost several microseconds (locks, label
lookups); here a request costs a few list increments on an object the exchange already holds. The
numbers are cumulative from the worker's start, like Prometheus counters, and survive config reloads:
they are keyed by (service, version) names, not by snapshot objects.

Pure data: no I/O, no clock. Durations come in as arguments.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Final

from .flags import per_flag

__all__ = ["LATENCY_BOUNDS", "VersionStats", "WorkerStats"]

# Upper bounds, in seconds, of the latency histogram buckets (the last bucket is +Inf).
LATENCY_BOUNDS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")


class VersionStats:
    """What one version of one service answered, as seen by one worker."""

    __slots__ = ("buckets", "connect_errors", "ejections", "latency_sum", "responses", "retries", "timeouts")

    def __init__(self) -> None:
        self.responses = [0, 0, 0, 0, 0, 0]  # by status // 100; index 0: aborted without a status
        self.buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        self.connect_errors = 0
        self.timeouts = 0
        self.retries = 0
        self.ejections = 0

    def record(self, status: int, seconds: float) -> None:
        klass = status // 100
        self.responses[klass if 1 <= klass <= 5 else 0] += 1
        # The first bound not below ``seconds`` (bisect_left), as a loop: compiled, it is a few float
        # compares for the usual millisecond latencies instead of a call into the bisect module.
        index = 0
        for bound in LATENCY_BOUNDS:
            if bound >= seconds:
                break
            index += 1
        self.buckets[index] += 1
        self.latency_sum += seconds

    def snapshot(self) -> dict[str, object]:
        return {
            "responses": list(self.responses),
            "buckets": list(self.buckets),
            "latency_sum": self.latency_sum,
            "connect_errors": self.connect_errors,
            "timeouts": self.timeouts,
            "retries": self.retries,
            "ejections": self.ejections,
        }


@dataclass
class WorkerStats:
    """All of one worker's numbers. ``versions`` grows as new (service, version) pairs appear."""

    versions: dict[tuple[str, str], VersionStats] = field(default_factory=dict)
    unrouted: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0, 0])  # answered without a version
    flags: Counter[tuple[str, str]] = field(default_factory=Counter)  # OFREP evaluations by (flag, variant)
    # Injected flag header values, counted once per request (a defaultdict costs half a Counter's
    # increment); spread into evaluations by (flag, variant) when read.
    injected: defaultdict[bytes, int] = field(default_factory=lambda: defaultdict(int))

    def version(self, service: str, version: str) -> VersionStats:
        found = self.versions.get((service, version))
        if found is None:
            found = self.versions[(service, version)] = VersionStats()
        return found

    def snapshot(self, generation: int, connections: int) -> dict[str, object]:
        """A plain-data copy: what a scrape (or, later, the controller) reads from a worker."""
        return {
            "generation": generation,
            "connections": connections,
            "unrouted": list(self.unrouted),
            "flags": [[flag, variant, count] for (flag, variant), count in
                      (self.flags + Counter(per_flag(self.injected))).items()],
            "versions": [
                {"service": service, "version": version, **stats.snapshot()}
                for (service, version), stats in self.versions.items()
            ],
        }
