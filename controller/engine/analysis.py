"""Analysis: measurements of a canary over windows of requests, and the verdicts they give.

A *metric* is a named condition measured every ``interval`` seconds over the requests of that window:

    success_rate >= 0.99            error_rate <= stable + 0.01        latency_p99 <= 500ms
    latency_p99 <= 1.2 x stable     requests >= 100                    value < 0.05   (prometheus, web)

Conditions are parsed into a ``Condition`` record (``parse_condition``), never evaluated as code. A
bound is absolute or relative to the stable version over the same window (``stable``, ``stable + d``,
``k x stable``). Each measurement is Successful, Failed or Inconclusive:

- fewer than ``min_requests`` answered requests of the canary (or of stable, for a relative bound) in
  the window: Inconclusive, never Successful;
- a rate is decided by a one-sided z-test at ``confidence``: against stable, a two-proportion test;
  against an absolute bound, a score test. It fails only if the canary is worse than the bound beyond
  what chance explains (so 3 errors in 40 requests are no verdict against stable's 1 in 400, and 2
  errors in 197 are none against 99 %); the measurement says what was compared;
- a sample-ratio check (chi-square, 1 degree of freedom) compares the canary's share of the window's
  requests with the share its weight should give it; a mismatch (p < ``SRM_P`` and off by more than
  ``SRM_TOLERANCE`` of the expected share) makes the measurement Inconclusive with a warning: the
  split is not what the controller thinks, so the numbers do not judge the canary.

A ``Run`` is one analysis in progress (a blocking step, or the background analysis): per metric, its
measurements so far and when its current window ends. ``verdict`` reads it: Failed once a metric has
``failure_limit`` failed measurements, Inconclusive at ``inconclusive_limit`` inconclusive ones,
Successful once every metric has ``count`` Successful measurements (a background run, with no
count, never is).

Pure: counts and ``now`` in, measurements out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from statistics import NormalDist
from typing import Any, Literal

from .counts import EMPTY, Counts, Sample, quantile, window

__all__ = ["QUANTITIES", "SRM_P", "SRM_TOLERANCE", "Condition", "ConditionError", "Measurement", "Metric",
           "MetricRun", "Result", "Run", "Verdict", "measure", "parse_condition", "start_run", "tick", "verdict"]

SRM_P = 0.001
SRM_TOLERANCE = 0.5  # sticky users are split, not requests: a share within ±50 % of the weight is no alarm

RATES = ("success_rate", "error_rate")
LATENCIES = {"latency_p50": 0.5, "latency_p90": 0.9, "latency_p95": 0.95, "latency_p99": 0.99}
QUANTITIES = (*RATES, *LATENCIES, "latency_mean", "requests", "value")  # value: an external source's number

Op = Literal["<", "<=", ">", ">="]
Source = Literal["proxies", "prometheus", "web"]


class ConditionError(ValueError):
    """A condition that does not parse; the message says what is allowed."""


class Result(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


class Verdict(StrEnum):
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True, slots=True)
class Condition:
    quantity: str
    op: Op
    bound: float  # absolute bound, or the offset added to stable's value
    factor: float = 0.0  # 0: absolute; else the bound is factor x stable + bound

    @property
    def relative(self) -> bool:
        return self.factor != 0.0

    def holds(self, value: float, bound: float) -> bool:
        return {"<": value < bound, "<=": value <= bound, ">": value > bound, ">=": value >= bound}[self.op]

    def text(self) -> str:
        if not self.relative:
            return f"{self.quantity} {self.op} {self.bound:g}"
        scaled = "stable" if self.factor == 1 else f"{self.factor:g} x stable"
        offset = f" {'+' if self.bound >= 0 else '-'} {abs(self.bound):g}" if self.bound else ""
        return f"{self.quantity} {self.op} {scaled}{offset}"


_NUMBER = r"(\d+(?:\.\d+)?)\s*(ms|s|%)?"
_CONDITION = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*(.+?)\s*$")
_ABSOLUTE = re.compile(rf"^{_NUMBER}$")
_OFFSET = re.compile(rf"^stable(?:\s*([+-])\s*{_NUMBER})?$")
_TIMES = "[x*\u00d7]"  # 1.2 x stable, 1.2 * stable, 1.2 \u00d7 stable
_SCALED = re.compile(rf"^(?:(\d+(?:\.\d+)?)\s*{_TIMES}\s*stable|stable\s*{_TIMES}\s*(\d+(?:\.\d+)?))"
                     rf"(?:\s*([+-])\s*{_NUMBER})?$")
_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "%": 0.01}


def parse_condition(text: str) -> Condition:
    """``quantity op bound`` -> a Condition, or ConditionError saying what is allowed."""
    found = _CONDITION.match(text) if isinstance(text, str) else None
    if found is None:
        raise ConditionError(f"must be 'QUANTITY OP BOUND' such as 'success_rate >= 0.99', got {text!r}")
    quantity, op, bound = found.group(1), found.group(2), found.group(3)
    if quantity not in QUANTITIES:
        raise ConditionError(f"unknown quantity {quantity!r} (known: {', '.join(QUANTITIES)})")
    if (absolute := _ABSOLUTE.match(bound)) is not None:
        return Condition(quantity, op, _number(absolute.group(1), absolute.group(2)))  # type: ignore[arg-type]
    if quantity in ("requests", "value"):
        raise ConditionError(f"{quantity} takes an absolute bound, got {bound!r}")
    if (offset := _OFFSET.match(bound)) is not None:
        sign = -1.0 if offset.group(1) == "-" else 1.0
        delta = _number(offset.group(2), offset.group(3)) if offset.group(2) else 0.0
        return Condition(quantity, op, sign * delta, 1.0)  # type: ignore[arg-type]
    if (scaled := _SCALED.match(bound)) is not None:
        factor = float(scaled.group(1) or scaled.group(2))
        if factor <= 0:
            raise ConditionError("the factor of stable must be more than 0")
        sign = -1.0 if scaled.group(3) == "-" else 1.0
        delta = _number(scaled.group(4), scaled.group(5)) if scaled.group(4) else 0.0
        return Condition(quantity, op, sign * delta, factor)  # type: ignore[arg-type]
    raise ConditionError(f"the bound must be a number (0.99, 99%, 500ms), 'stable', 'stable + 0.01' or "
                         f"'1.2 x stable', got {bound!r}")


def _number(digits: str, unit: str | None) -> float:
    return float(digits) * _UNITS[unit]


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    condition: Condition
    interval: float = 60.0  # seconds per window
    count: int | None = None  # measurements a blocking run takes (None: until the rollout ends)
    failure_limit: int = 1  # this many Failed measurements fail the analysis
    inconclusive_limit: int = 3  # this many Inconclusive ones pause the rollout for a human
    min_requests: int = 50  # answered requests a window needs (canary; and stable for relative bounds)
    confidence: float = 0.99  # of the z-test deciding a rate relative to stable
    source: Source = "proxies"
    address: str = ""  # prometheus: the server's base URL
    query: str = ""  # prometheus: the PromQL query; web: the URL
    field: str = ""  # web: the dotted path of the number in the JSON answer


@dataclass(frozen=True, slots=True)
class Measurement:
    metric: str
    result: Result
    value: float | None
    detail: str  # what was compared: "canary success_rate 0.951 < 0.99 (n=812)"
    at: float

    def saved(self) -> dict[str, Any]:
        return {"metric": self.metric, "result": self.result.value, "value": self.value, "detail": self.detail,
                "at": self.at}

    @classmethod
    def restored(cls, data: Mapping[str, Any]) -> Measurement:
        return cls(data["metric"], Result(data["result"]), data["value"], data["detail"], data["at"])


def measure(metric: Metric, canary: Counts, stable: Counts, share: float | None, value: float | None = None,
            at: float = 0.0) -> Measurement:
    """One window's measurement. ``share``: the canary's expected share of the requests that reach
    either version (None: no sample-ratio check); ``value``: an external source's number."""
    condition = metric.condition

    def result(outcome: Result, number: float | None, detail: str) -> Measurement:
        return Measurement(metric.name, outcome, number, detail, at)

    if condition.quantity == "value":
        if value is None or not math.isfinite(value):
            return result(Result.INCONCLUSIVE, None, f"{metric.source} gave no number")
        verdict = Result.SUCCESSFUL if condition.holds(value, condition.bound) else Result.FAILED
        return result(verdict, value, f"{metric.source} value {value:.4g} {_said(verdict, condition)} "
                                      f"{condition.bound:g}")
    n = canary.answered
    if condition.quantity == "requests":
        verdict = Result.SUCCESSFUL if condition.holds(n, condition.bound) else Result.FAILED
        return result(verdict, float(n), f"canary requests {n} {_said(verdict, condition)} {condition.bound:g}")
    if n < metric.min_requests:
        return result(Result.INCONCLUSIVE, None, f"canary answered {n} requests, fewer than {metric.min_requests}")
    if condition.relative and stable.answered < metric.min_requests:
        return result(Result.INCONCLUSIVE, None,
                      f"stable answered {stable.answered} requests, fewer than {metric.min_requests}")
    mismatch = _sample_ratio(n, stable.answered, share)
    if mismatch:
        return result(Result.INCONCLUSIVE, None, mismatch)
    if condition.quantity in RATES:
        return _rate(metric, canary, stable, at)
    mine, theirs = _latency(condition.quantity, canary), _latency(condition.quantity, stable)
    assert mine is not None  # n > 0
    if not condition.relative:
        verdict = Result.SUCCESSFUL if condition.holds(mine, condition.bound) else Result.FAILED
        return result(verdict, mine, f"canary {condition.quantity} {mine:.4g}s {_said(verdict, condition)} "
                                     f"{condition.bound:g}s (n={n})")
    assert theirs is not None
    bound = condition.factor * theirs + condition.bound
    verdict = Result.SUCCESSFUL if condition.holds(mine, bound) else Result.FAILED
    return result(verdict, mine, f"canary {condition.quantity} {mine:.4g}s {_said(verdict, condition)} "
                                 f"{condition.text().split(' ', 2)[2]} = {bound:.4g}s (stable {theirs:.4g}s; "
                                 f"n={n} vs {stable.answered})")


def _said(verdict: Result, condition: Condition) -> str:
    """The operator as the measurement found it: the condition's when it held, its negation when not."""
    if verdict is Result.SUCCESSFUL:
        return condition.op
    return {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}[condition.op]


def _rate(metric: Metric, canary: Counts, stable: Counts, at: float) -> Measurement:
    """A rate against its bound, decided by a one-sided z-test at the metric's confidence: Failed only
    when the canary is on the wrong side of the bound beyond what chance explains."""
    condition = metric.condition
    n_c, n_s = canary.answered, stable.answered
    errors = condition.quantity == "error_rate"
    p_c = (canary.errors if errors else n_c - canary.errors) / n_c
    if condition.relative:
        p_s = (stable.errors if errors else n_s - stable.errors) / n_s
        bound = condition.factor * p_s + condition.bound
        # Unpooled: the bound is not "equal to stable", so the two rates are not assumed equal.
        variance = p_c * (1 - p_c) / n_c + condition.factor ** 2 * p_s * (1 - p_s) / n_s
        if variance == 0:  # both rates are 0 or 1: smooth by half a count, so 0 vs 0 is not infinitely sure
            q_c, q_s = (p_c * n_c + 0.5) / (n_c + 1), (p_s * n_s + 0.5) / (n_s + 1)
            variance = q_c * (1 - q_c) / n_c + condition.factor ** 2 * q_s * (1 - q_s) / n_s
        compared = (f"bound {condition.text().split(' ', 2)[2]} = {bound:.4g} (stable {p_s:.4g}); "
                    f"n={n_c} vs {n_s}")
    else:
        bound = condition.bound
        variance = bound * (1 - bound) / n_c  # the score test: the variance the bound itself implies
        compared = f"{bound:g} (n={n_c})"
    wrong = p_c - bound if condition.op in ("<", "<=") else bound - p_c  # > 0: on the wrong side
    critical = NormalDist().inv_cdf(metric.confidence)
    if variance > 0:
        z = wrong / math.sqrt(variance)
        failed = z > critical
        test = f": z={z:.2f} {'>' if failed else '<='} {critical:.2f} at {metric.confidence:.0%} confidence"
    else:  # a bound of exactly 0 or 1 leaves no room for chance
        failed, test = not condition.holds(p_c, bound), ""
    verdict = Result.FAILED if failed else Result.SUCCESSFUL
    op = _said(Result.SUCCESSFUL if condition.holds(p_c, bound) else Result.FAILED, condition)
    return Measurement(metric.name, verdict, p_c, f"canary {condition.quantity} {p_c:.4g} {op} {compared}{test}", at)


def _latency(quantity: str, counts: Counts) -> float | None:
    if counts.answered == 0 and sum(counts.buckets) == 0:
        return None
    if quantity == "latency_mean":
        return counts.latency_sum / max(1, sum(counts.buckets))
    return quantile(counts, LATENCIES[quantity])


def _sample_ratio(canary: int, stable: int, share: float | None) -> str:
    """A warning when the canary's share of requests is not what its weight should give, else ''."""
    total = canary + stable
    if share is None or not 0 < share < 1 or total == 0:
        return ""
    expected_c, expected_s = total * share, total * (1 - share)
    chi2 = (canary - expected_c) ** 2 / expected_c + (stable - expected_s) ** 2 / expected_s
    p = math.erfc(math.sqrt(chi2 / 2))
    observed = canary / total
    if p < SRM_P and abs(observed / share - 1) > SRM_TOLERANCE:
        return (f"sample ratio mismatch: the canary got {observed:.2%} of {total} requests, its weight says "
                f"{share:.2%} (chi-square p={p:.2g}); the split is not what the controller thinks")
    return ""


# -- runs


@dataclass(frozen=True, slots=True)
class MetricRun:
    metric: Metric
    measurements: tuple[Measurement, ...] = ()
    ends_at: float | None = None  # end of the current window (None: starts at the next tick)
    baseline: Sample | None = None  # the sample at the window's start (not persisted)

    def tally(self, result: Result) -> int:
        return sum(1 for m in self.measurements if m.result is result)


@dataclass(frozen=True, slots=True)
class Run:
    label: str  # what it judges, for reasons: "analysis errors, latency" / "background analysis errors"
    metrics: tuple[MetricRun, ...]

    def restarted(self) -> Run:
        """After a restart or a weight change: every window begins afresh (a partial one never counts)."""
        return replace(self, metrics=tuple(replace(m, ends_at=None, baseline=None) for m in self.metrics))

    def wake_at(self) -> float | None:
        ends = [m.ends_at for m in self.metrics if m.ends_at is not None and not _done(m)]
        return min(ends) if ends else None


def start_run(label: str, metrics: tuple[Metric, ...]) -> Run:
    return Run(label, tuple(MetricRun(metric) for metric in metrics))


def tick(run: Run, sample: Sample, canary: str, stable: str, share: float | None, now: float,
         values: Mapping[str, float | None] | None = None) -> tuple[Run, list[Measurement]]:
    """Close every window that has ended at ``now`` and open the next one. ``values``: external sources'
    numbers by metric name, read by the shell for this tick."""
    taken: list[Measurement] = []
    metrics = []
    for entry in run.metrics:
        if _done(entry):
            metrics.append(entry)
        elif entry.ends_at is None or entry.baseline is None:
            metrics.append(replace(entry, ends_at=now + entry.metric.interval, baseline=dict(sample)))
        elif now >= entry.ends_at:
            counted = window(entry.baseline, sample)
            found = measure(entry.metric, counted.get(canary, EMPTY), counted.get(stable, EMPTY), share,
                            (values or {}).get(entry.metric.name), now)
            taken.append(found)
            metrics.append(replace(entry, measurements=(*entry.measurements, found)[-100:],
                                   ends_at=now + entry.metric.interval, baseline=dict(sample)))
        else:
            metrics.append(entry)
    return replace(run, metrics=tuple(metrics)), taken


def _done(entry: MetricRun) -> bool:
    """A metric of a blocking run is done with ``count`` Successful measurements: Inconclusive and
    Failed ones (below their limits) do not count toward it, so no run passes without evidence."""
    return entry.metric.count is not None and entry.tally(Result.SUCCESSFUL) >= entry.metric.count


def verdict(run: Run) -> tuple[Verdict, str]:
    """The run's verdict and, when it is not Running, why (the deciding measurement)."""
    for result, found, said in ((Result.FAILED, Verdict.FAILED, "failed"),
                                (Result.INCONCLUSIVE, Verdict.INCONCLUSIVE, "inconclusive")):
        for entry in run.metrics:
            count = entry.tally(result)
            limit = entry.metric.failure_limit if result is Result.FAILED else entry.metric.inconclusive_limit
            if count >= limit:
                last = next(m for m in reversed(entry.measurements) if m.result is result)
                return found, f"{run.label}: {entry.metric.name} {said} {count}/{limit}: {last.detail}"
    if run.metrics and all(_done(entry) for entry in run.metrics):
        return Verdict.SUCCESSFUL, f"{run.label}: every metric passed"
    return Verdict.RUNNING, ""
