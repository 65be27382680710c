"""Analysis (``controller.engine.analysis`` and ``counts``): conditions parsed, never evaluated; windows
over reported counters; verdicts on counts that are noise and counts that are not."""

from __future__ import annotations

import pytest

from controller.engine.analysis import (
    Condition,
    ConditionError,
    Metric,
    Result,
    Verdict,
    measure,
    parse_condition,
    start_run,
    tick,
    verdict,
)
from controller.engine.counts import Counts, quantile, sample_of, window
from turnout.core.stats import LATENCY_BOUNDS


def counts(answered: int, errors: int = 0, aborted: int = 0, latency_bucket: int = 3) -> Counts:
    buckets = [0] * (len(LATENCY_BOUNDS) + 1)
    buckets[latency_bucket] = answered + aborted
    return Counts((aborted, 0, answered - errors, 0, 0, errors), tuple(buckets), 0.007 * (answered + aborted))


@pytest.mark.parametrize(("text", "expected"), [
    ("success_rate >= 0.99", Condition("success_rate", ">=", 0.99)),
    ("success_rate>=99%", Condition("success_rate", ">=", 0.99)),
    ("latency_p99 <= 500ms", Condition("latency_p99", "<=", 0.5)),
    ("latency_p99 <= 0.5s", Condition("latency_p99", "<=", 0.5)),
    ("error_rate <= stable + 0.01", Condition("error_rate", "<=", 0.01, 1.0)),
    ("error_rate < stable", Condition("error_rate", "<", 0.0, 1.0)),
    ("success_rate >= stable - 1%", Condition("success_rate", ">=", -0.01, 1.0)),
    ("latency_p99 <= 1.2 x stable", Condition("latency_p99", "<=", 0.0, 1.2)),
    ("latency_p99 <= 1.2 \u00d7 stable", Condition("latency_p99", "<=", 0.0, 1.2)),
    ("latency_p95 <= stable * 2 + 10ms", Condition("latency_p95", "<=", 0.01, 2.0)),
    ("requests >= 100", Condition("requests", ">=", 100.0)),
    ("value < 0.05", Condition("value", "<", 0.05)),
])
def test_conditions_parse_into_records(text: str, expected: Condition) -> None:
    assert parse_condition(text) == expected


@pytest.mark.parametrize("text", [
    "", "success_rate", "success_rate == 0.99", "__import__('os') >= 1", "success_rate >= 0.99 or 1",
    "speed >= 1", "requests >= stable", "value <= stable + 1", "latency_p99 <= 0 x stable", "error_rate <= -1",
])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ConditionError):
        parse_condition(text)


def test_windows_take_differences_per_source_and_count_a_restart_from_zero() -> None:
    before = {("edge-1/10", "v1"): counts(100), ("edge-1/10", "v2"): counts(10, 1), ("edge-2/20", "v2"): counts(50),
              ("edge-4/40", "v1"): counts(9)}
    after = {("edge-1/10", "v1"): counts(160), ("edge-1/10", "v2"): counts(30, 3),
             ("edge-2/21", "v2"): counts(7),  # edge-2's worker restarted: new, it counts from the next window
             ("edge-3/30", "v2"): counts(5000),  # a proxy first heard of now: its counts predate the window
             ("edge-4/40", "v1"): counts(9), ("edge-4/40", "v2"): counts(4)}  # its first v2 requests: all new
    got = window(before, after)
    assert got["v1"].answered == 60
    assert got["v2"].answered == 20 + 4 and got["v2"].errors == 2
    # The same worker whose counters went down (reset in place): counted from zero, never negative.
    assert window({("a/1", "v1"): counts(100)}, {("a/1", "v1"): counts(40)})["v1"].answered == 40


def test_reports_are_read_per_worker_and_bad_entries_skipped() -> None:
    entry = {"service": "demo", "version": "v2", "responses": [1, 0, 9, 0, 0, 1], "buckets": [10] + [0] * 13,
             "latency_sum": 0.01}
    reports = [("edge-1", {"workers": [{"pid": 7, "versions": [entry, {**entry, "service": "other"},
                                                                {**entry, "responses": "x"}]},
                                       {"pid": 8, "versions": [entry]}, "junk"]}),
               ("edge-2", {"workers": "nope"}), ("edge-3", [])]
    sample = sample_of(reports, "demo")  # type: ignore[arg-type]
    assert set(sample) == {("edge-1/7", "v2"), ("edge-1/8", "v2")}
    assert sample[("edge-1/7", "v2")].answered == 10 and sample[("edge-1/7", "v2")].errors == 1


def test_quantiles_interpolate_within_the_histogram_bucket() -> None:
    buckets = [0] * (len(LATENCY_BOUNDS) + 1)
    buckets[3], buckets[4] = 50, 50  # (5 ms, 10 ms] and (10 ms, 25 ms]
    c = Counts((0, 0, 100, 0, 0, 0), tuple(buckets), 1.0)
    assert quantile(c, 0.5) == pytest.approx(0.010)
    assert quantile(c, 0.99) == pytest.approx(0.010 + 0.015 * 49 / 50)
    assert quantile(Counts(), 0.99) is None


def metric(condition: str, **kwargs: object) -> Metric:
    return Metric("m", parse_condition(condition), **kwargs)  # type: ignore[arg-type]


def test_absolute_rates_and_the_minimum_sample() -> None:
    gate = metric("success_rate >= 0.99", min_requests=50)
    passed = measure(gate, counts(800, 4), counts(5000), None)
    assert passed.result is Result.SUCCESSFUL and passed.value == pytest.approx(0.995)
    failed = measure(gate, counts(812, 40), counts(5000), None)
    assert failed.result is Result.FAILED and "canary success_rate 0.9507 < 0.99 (n=812)" in failed.detail
    few = measure(gate, counts(49, 0), counts(5000), None)
    assert few.result is Result.INCONCLUSIVE and "fewer than 50" in few.detail  # never Successful
    aborted_only = measure(gate, counts(0, 0, aborted=500), counts(5000), None)
    assert aborted_only.result is Result.INCONCLUSIVE


def test_rates_relative_to_stable_are_decided_by_a_test_not_by_noise() -> None:
    gate = metric("error_rate <= stable", min_requests=20, confidence=0.99)
    # 3 errors in 40 against 1 in 400: 7.5 % vs 0.25 %, but 40 requests cannot tell at 99 %.
    noisy = measure(gate, counts(40, 3), counts(400, 1), None)
    assert noisy.result is Result.SUCCESSFUL and "z=" in noisy.detail and "n=40 vs 400" in noisy.detail
    # 5 % of 1,000 against 0.1 % of 10,000: no chance explains that.
    real = measure(gate, counts(1000, 50), counts(10_000, 10), None)
    assert real.result is Result.FAILED and "z=" in real.detail
    # A margin: 2 % vs 1.5 % passes "within stable + 1 %" even with plenty of requests.
    margin = metric("error_rate <= stable + 0.01", min_requests=20)
    assert measure(margin, counts(20_000, 400), counts(200_000, 3000), None).result is Result.SUCCESSFUL
    # Zero errors on both sides is not a division by zero, and passes.
    assert measure(gate, counts(500), counts(5000), None).result is Result.SUCCESSFUL
    # Stable without enough requests: a relative bound cannot be judged.
    assert measure(gate, counts(500), counts(10), None).result is Result.INCONCLUSIVE


def test_latency_absolute_and_relative() -> None:
    slow, fast = counts(500, latency_bucket=8), counts(5000, latency_bucket=3)  # (0.25, 0.5] vs (5, 10] ms
    assert measure(metric("latency_p99 <= 100ms"), slow, fast, None).result is Result.FAILED
    assert measure(metric("latency_p99 <= 100ms"), fast, slow, None).result is Result.SUCCESSFUL
    relative = measure(metric("latency_p99 <= 1.2 x stable"), slow, fast, None)
    assert relative.result is Result.FAILED and "stable" in relative.detail


def test_a_sample_ratio_mismatch_is_inconclusive_with_a_warning() -> None:
    gate = metric("success_rate >= 0.99", min_requests=50)
    # The weight says 10 %, the canary got 1 % of the requests.
    off = measure(gate, counts(100), counts(9900), 0.10)
    assert off.result is Result.INCONCLUSIVE and "sample ratio mismatch" in off.detail
    # 8 % where 10 % was expected: sticky users are split, not requests; no alarm.
    assert measure(gate, counts(800), counts(9200), 0.10).result is Result.SUCCESSFUL


def test_runs_take_windows_and_reach_verdicts() -> None:
    gate = metric("success_rate >= 0.99", interval=10.0, count=2, failure_limit=2, min_requests=10)
    run = start_run("analysis errors", (gate,))
    total = {("p/1", "v2"): counts(0), ("p/1", "v1"): counts(0)}
    run, taken = tick(run, total, "v2", "v1", None, now=0.0)  # the first window opens
    assert taken == [] and run.wake_at() == 10.0 and verdict(run)[0] is Verdict.RUNNING
    run, taken = tick(run, {("p/1", "v2"): counts(100), ("p/1", "v1"): counts(900)}, "v2", "v1", None, now=5.0)
    assert taken == []  # the window has not ended
    run, taken = tick(run, {("p/1", "v2"): counts(100), ("p/1", "v1"): counts(900)}, "v2", "v1", None, now=10.0)
    assert [m.result for m in taken] == [Result.SUCCESSFUL]
    run, taken = tick(run, {("p/1", "v2"): counts(200, 10), ("p/1", "v1"): counts(1800)}, "v2", "v1", None, 20.0)
    assert [m.result for m in taken] == [Result.FAILED] and verdict(run)[0] is Verdict.RUNNING  # 1 of 2 allowed
    run, taken = tick(run, {("p/1", "v2"): counts(300, 10), ("p/1", "v1"): counts(2700)}, "v2", "v1", None, 30.0)
    found, why = verdict(run)
    assert found is Verdict.SUCCESSFUL and "every metric passed" in why
    failing = start_run("analysis errors", (gate,))
    for now, answered, errors in ((0.0, 0, 0), (10.0, 100, 10), (20.0, 200, 20)):
        failing, _ = tick(failing, {("p/1", "v2"): counts(answered, errors)}, "v2", "v1", None, now)
    found, why = verdict(failing)
    assert found is Verdict.FAILED and why.startswith("analysis errors: m failed 2/2: canary success_rate 0.9 < 0.99")


def test_inconclusive_windows_pause_and_never_pass() -> None:
    gate = metric("success_rate >= 0.99", interval=1.0, count=1, inconclusive_limit=2, min_requests=100)
    run = start_run("analysis", (gate,))
    for now in range(3):
        run, _ = tick(run, {("p/1", "v2"): counts(now)}, "v2", "v1", None, float(now))
    assert verdict(run)[0] is Verdict.INCONCLUSIVE
