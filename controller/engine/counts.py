"""Request counts as the proxies report them, and windows over them.

Every managed proxy reports, with each poll, its workers' cumulative counters per (service, version)
(``turnout.core.stats``): responses by status class (index 0: aborted without a status), the latency
histogram over ``LATENCY_BOUNDS`` and the latency sum. A ``Sample`` is one reading of them for one
service, keyed by (source, version) where the source is one worker of one proxy ("edge-1/4711"), so
that a window is the sum of per-source differences: a worker whose counters went down (it restarted
in place) counts from zero, as Prometheus's ``increase()`` does; a source that was not in the window's
first sample (a new worker or proxy, or one the controller had not heard from since its own restart)
counts from the next window on, since its counters hold requests from before the window.

Pure: reported data in, numbers out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from turnout.core.stats import LATENCY_BOUNDS

__all__ = ["EMPTY", "Counts", "Sample", "quantile", "sample_of", "window"]

_CLASSES = 6  # aborted, 1xx .. 5xx
_BUCKETS = len(LATENCY_BOUNDS) + 1


@dataclass(frozen=True, slots=True)
class Counts:
    responses: tuple[int, ...] = (0,) * _CLASSES
    buckets: tuple[int, ...] = (0,) * _BUCKETS
    latency_sum: float = 0.0

    @property
    def answered(self) -> int:
        """Requests answered with a status. Aborted ones (the client left, nothing was answered) are
        neither successes nor errors of the version: they are left out of rates."""
        return sum(self.responses[1:])

    @property
    def errors(self) -> int:
        return self.responses[5]

    def __add__(self, other: Counts) -> Counts:
        return Counts(tuple(a + b for a, b in zip(self.responses, other.responses, strict=True)),
                      tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)),
                      self.latency_sum + other.latency_sum)

    def since(self, before: Counts) -> Counts:
        """What was added after ``before``; everything if the counters went down (a restart)."""
        if any(a < b for a, b in zip(self.responses, before.responses, strict=True)):
            return self
        return Counts(tuple(a - b for a, b in zip(self.responses, before.responses, strict=True)),
                      tuple(max(0, a - b) for a, b in zip(self.buckets, before.buckets, strict=True)),
                      max(0.0, self.latency_sum - before.latency_sum))


EMPTY = Counts()

Sample = Mapping[tuple[str, str], Counts]  # (source, version) -> cumulative counts


def sample_of(reports: Iterable[tuple[str, Mapping[str, Any]]], service: str) -> dict[tuple[str, str], Counts]:
    """The counts of ``service`` in proxies' reports, ``(proxy id, stats)`` as polled. Malformed entries
    are skipped: a report is data from another process, not something to crash on."""
    found: dict[tuple[str, str], Counts] = {}
    for proxy, stats in reports:
        workers = stats.get("workers") if isinstance(stats, Mapping) else None
        for worker in workers if isinstance(workers, list) else []:
            if not isinstance(worker, Mapping) or not isinstance(worker.get("versions"), list):
                continue
            source = f"{proxy}/{worker.get('pid', '?')}"
            for entry in worker["versions"]:
                counts = _counts(entry) if isinstance(entry, Mapping) and entry.get("service") == service else None
                if counts is not None:
                    key = (source, str(entry.get("version")))
                    found[key] = found.get(key, EMPTY) + counts
    return found


def _counts(entry: Mapping[str, Any]) -> Counts | None:
    responses, buckets, total = entry.get("responses"), entry.get("buckets"), entry.get("latency_sum", 0.0)
    if not (isinstance(responses, list) and len(responses) == _CLASSES and isinstance(buckets, list)
            and len(buckets) == _BUCKETS and isinstance(total, int | float)):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (*responses, *buckets)):
        return None
    return Counts(tuple(responses), tuple(buckets), float(total))


def window(before: Sample, after: Sample) -> dict[str, Counts]:
    """Per version, what the sources of ``before`` counted between two samples. A source's first
    entry for a version counts from zero when the source itself was in ``before`` (its first request
    to that version came in the window), and not at all when the source is new."""
    sources = {source for source, _ in before}
    totals: dict[str, Counts] = {}
    for (source, version), now in after.items():
        if source in sources:
            totals[version] = totals.get(version, EMPTY) + now.since(before.get((source, version), EMPTY))
    return totals


def quantile(counts: Counts, q: float) -> float | None:
    """The ``q`` quantile of the latency histogram, interpolated within its bucket as Prometheus's
    ``histogram_quantile`` does (the open last bucket answers its lower bound). None without data."""
    total = sum(counts.buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts.buckets):
        if count and seen + count >= rank:
            if index == len(LATENCY_BOUNDS):
                return LATENCY_BOUNDS[-1]
            low = LATENCY_BOUNDS[index - 1] if index else 0.0
            return low + (LATENCY_BOUNDS[index] - low) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS[-1]
