"""Prometheus exposition of the workers' statistics (``stats.WorkerStats.snapshot``).

A scrape collects one snapshot per worker and sums them, so one scrape shows every worker's counts.
Names follow Prometheus conventions: ``turnout_…_total`` counters, ``_seconds`` histograms, labels in
the project's vocabulary (service, version).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from turnout.core.stats import LATENCY_BOUNDS, STATUS_CLASSES

__all__ = ["render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _classes(counts: Sequence[int]) -> Iterator[tuple[str, int]]:
    yield "aborted", counts[0]
    yield from zip(STATUS_CLASSES, counts[1:], strict=True)


class _Snapshots:
    """A prometheus-client collector over worker snapshots taken for this scrape."""

    def __init__(self, snapshots: Sequence[dict[str, Any]], reload_counts: Mapping[str, int]) -> None:
        self.snapshots = snapshots
        self.reload_counts = reload_counts

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "turnout_requests", "Requests answered, by service, version and status class (aborted: cut off).",
            labels=["service", "version", "code_class"])
        duration = HistogramMetricFamily(
            "turnout_request_duration_seconds", "Time from request head to the end of the response.",
            labels=["service", "version"])
        connect_errors = CounterMetricFamily(
            "turnout_upstream_connect_errors", "Failed connects (refused, unreachable, TLS) to upstreams.",
            labels=["service", "version"])
        timeouts = CounterMetricFamily(
            "turnout_upstream_timeouts", "Upstream connect or read timeouts.", labels=["service", "version"])
        retries = CounterMetricFamily(
            "turnout_retries", "Requests retried on a new upstream connection.", labels=["service", "version"])
        ejections = CounterMetricFamily(
            "turnout_ejections", "Endpoints ejected for failing requests in a row.", labels=["service", "version"])
        unrouted = CounterMetricFamily(
            "turnout_unrouted_requests", "Requests answered by the proxy itself without a version "
            "(malformed, no service, redirects).", labels=["code_class"])
        reloads = CounterMetricFamily("turnout_config_reloads", "Config reloads by result.", labels=["result"])
        connections = GaugeMetricFamily("turnout_active_connections", "Open client connections.")
        flag_evaluations = CounterMetricFamily(
            "turnout_flag_evaluations", "Feature flag evaluations (OFREP and injected), by flag and variant.",
            labels=["flag", "variant"])
        flag_counts: dict[tuple[str, str], int] = {}
        generation = GaugeMetricFamily(
            "turnout_generation", "Routing generation each worker serves.", labels=["worker"])

        per_version: dict[tuple[str, str], dict[str, Any]] = {}
        unrouted_counts = [0] * 6
        open_connections = 0
        for index, snapshot in enumerate(self.snapshots):
            generation.add_metric([str(index)], snapshot["generation"])
            open_connections += snapshot["connections"]
            unrouted_counts = [a + b for a, b in zip(unrouted_counts, snapshot["unrouted"], strict=True)]
            for flag, variant, count in snapshot.get("flags", []):
                flag_counts[(flag, variant)] = flag_counts.get((flag, variant), 0) + count
            for entry in snapshot["versions"]:
                key = (entry["service"], entry["version"])
                total = per_version.setdefault(key, {
                    "responses": [0] * 6, "buckets": [0] * (len(LATENCY_BOUNDS) + 1), "latency_sum": 0.0,
                    "connect_errors": 0, "timeouts": 0, "retries": 0, "ejections": 0,
                })
                for field in ("responses", "buckets"):
                    total[field] = [a + b for a, b in zip(total[field], entry[field], strict=True)]
                for field in ("latency_sum", "connect_errors", "timeouts", "retries", "ejections"):
                    total[field] += entry[field]
        for (service, version), total in sorted(per_version.items()):
            labels = [service, version]
            for klass, count in _classes(total["responses"]):
                requests.add_metric([*labels, klass], count)
            cumulative, running = [], 0
            for bound, count in zip([*map(str, LATENCY_BOUNDS), "+Inf"], total["buckets"], strict=True):
                running += count
                cumulative.append((bound, running))
            duration.add_metric(labels, cumulative, total["latency_sum"])
            connect_errors.add_metric(labels, total["connect_errors"])
            timeouts.add_metric(labels, total["timeouts"])
            retries.add_metric(labels, total["retries"])
            ejections.add_metric(labels, total["ejections"])
        for klass, count in _classes(unrouted_counts):
            unrouted.add_metric([klass], count)
        for result, count in self.reload_counts.items():
            reloads.add_metric([result], count)
        connections.add_metric([], open_connections)
        for (flag, variant), count in sorted(flag_counts.items()):
            flag_evaluations.add_metric([flag, variant], count)
        return [requests, duration, connect_errors, timeouts, retries, ejections, unrouted, reloads, connections,
                generation, flag_evaluations]


def render(snapshots: Sequence[dict[str, Any]], reload_counts: Mapping[str, int] | None = None) -> bytes:
    """The Prometheus text format for these worker snapshots and the writer's reload counts (one per
    reload, however many workers it reached)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshots(snapshots, reload_counts or {"success": 0, "failure": 0}))
    return generate_latest(registry)
