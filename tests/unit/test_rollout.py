"""The rollout engine (``controller.engine.rollout``), tick by tick with simulated counts and a simulated
fleet: every step kind, both strategies, every command in every phase, and a restart at every tick."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from controller.engine.counts import Counts
from controller.engine.rollout import (
    TRANSITIONS,
    CallGate,
    Command,
    Measured,
    Notify,
    Observation,
    Phase,
    Publish,
    Rollout,
    RolloutError,
    advance,
    command,
    restarted,
    start,
)
from controller.engine.route import PPM, Route
from controller.engine.spec import SetWeight, Spec, compile_spec
from turnout.core.errors import ConfigError
from turnout.core.reader import Reader
from turnout.core.stats import LATENCY_BOUNDS

TEMPLATES = {"errors": {"metrics": [{"name": "success", "condition": "success_rate >= 0.99", "interval": "10s",
                                     "count": 2, "minRequests": 50}]}}
CANARY = {"strategy": "canary", "steps": [
    {"setHeaderRoute": {"name": "testers", "match": {"headers": {"x-canary": "1"}}}},
    {"setWeight": 10},
    {"analysis": {"templates": ["errors"]}},
    {"pause": {"duration": "30s"}},
    {"setWeight": 50},
    {"pause": {}},
], "analysis": {"templates": ["errors"], "startingStep": 2}, "scaleDownDelay": "60s",
    "webhooks": ["http://127.0.0.1:1/hook"]}


def spec(raw: dict[str, Any] | None = None) -> Spec:
    return compile_spec(Reader("controller.yaml"), raw or CANARY, "rollouts.demo", TEMPLATES)


@dataclass
class Fleet:
    """Proxies that serve what is published at the next tick, and users whose requests the route splits."""

    rollout: Rollout
    now: float = 0.0
    applied: Route | None = None
    totals: dict[str, list[int]] = field(default_factory=lambda: {"v1": [0, 0], "v2": [0, 0]})  # answered, errors
    gates: dict[str, tuple[bool, str]] = field(default_factory=dict)
    log: list[Any] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def traffic(self, requests: int, canary_errors: float, stable_errors: float = 0.001) -> None:
        if self.applied is None:
            return
        share = self.applied.weight("v2") / PPM
        for _ in range(requests):
            cohort = self.applied.cohorts and self.rng.random() < 0.1  # a tenth of the users are in the cohorts
            version = "v2" if cohort or self.rng.random() < share else "v1"
            rate = canary_errors if version == "v2" else stable_errors
            self.totals[version][0] += 1
            self.totals[version][1] += self.rng.random() < rate

    def sample(self) -> dict[tuple[str, str], Counts]:
        found = {}
        for version, (answered, errors) in self.totals.items():
            buckets = [0] * (len(LATENCY_BOUNDS) + 1)
            buckets[2] = answered
            found[("edge-1/1", version)] = Counts((0, 0, answered - errors, 0, 0, errors), tuple(buckets), 0.0)
        return found

    def tick(self, seconds: float = 1.0, requests: int = 100, canary_errors: float = 0.0) -> list[Any]:
        self.traffic(requests, canary_errors)
        self.now += seconds
        self.rollout, actions, wake = advance(self.rollout, Observation(self.applied, self.sample(), self.gates),
                                              self.now)
        assert wake is None or wake >= self.now
        for action in actions:
            if isinstance(action, Publish):
                self.applied = action.route  # served everywhere by the next tick
        self.log.extend(actions)
        return actions

    def run_until(self, phases: set[Phase], limit: int = 2000, **kwargs: Any) -> None:
        for _ in range(limit):
            if self.rollout.phase in phases:
                return
            self.tick(**kwargs)
        raise AssertionError(f"still {self.rollout.phase} at step {self.rollout.step}: {self.rollout.reason}")


def fleet(raw: dict[str, Any] | None = None) -> Fleet:
    return Fleet(start("demo-1", "demo", "v1", "v2", spec(raw), "tester", 0.0))


def test_a_healthy_canary_takes_every_step_and_succeeds() -> None:
    f = fleet()
    f.tick()
    assert f.rollout.phase is Phase.PROGRESSING and f.rollout.route.cohorts  # the cohort first, weight 0
    assert f.rollout.route.weights == (("v1", PPM), ("v2", 0))
    f.run_until({Phase.PAUSED})
    assert f.rollout.reason == "pause step: until promoted" and f.applied == f.rollout.route
    assert f.applied.weight("v2") == 500_000
    history = [t.why for t in f.rollout.history]
    assert any("analysis errors: every metric passed" in why for why in history)
    assert any("pause 30s ended" in why for why in history)
    pause_started = next(t.at for t in f.rollout.history if "setWeight 10%" in t.why)
    pause_ended = next(t.at for t in f.rollout.history if "pause 30s ended" in t.why)
    assert pause_ended - pause_started >= 30
    f.rollout, told = command(f.rollout, Command.PROMOTE, "tester", f.now)
    f.log.extend(told)
    f.run_until({Phase.SUCCEEDED})
    assert f.applied == Route((("v1", 0), ("v2", PPM)), (), "v2")  # no cohort, the old version warm at 0
    succeeded_at = f.now
    for _ in range(70):
        f.tick()
    assert f.rollout.retired and f.applied == Route((("v2", PPM),), (), "v2")
    retired_at = next(t.at for t in f.rollout.history if "left the routing" in t.why)
    assert 60 <= retired_at - succeeded_at <= 62
    phases = [n.event["phase"] for n in f.log if isinstance(n, Notify)]
    assert phases == ["Progressing", "Paused", "Progressing", "Succeeded"]
    assert all(isinstance(m, Measured) for m in f.log if isinstance(m, Measured))


def test_a_failing_canary_is_aborted_by_analysis_and_sent_back_to_stable() -> None:
    f = fleet()
    f.run_until({Phase.ABORTED}, canary_errors=0.05)
    assert f.rollout.reason.startswith("analysis errors: success failed 1/1: canary success_rate")
    assert f.rollout.history[-1].who == "analysis"
    f.tick()
    assert f.applied == Route((("v1", PPM), ("v2", 0)), (), "v2")  # published at once
    assert f.rollout.phase is Phase.ABORTED
    for _ in range(50):  # an aborted rollout never resumes
        f.tick(canary_errors=0.0)
    assert f.rollout.phase is Phase.ABORTED and f.applied.weight("v2") == 0


def test_no_step_is_taken_on_a_route_the_fleet_does_not_serve() -> None:
    f = fleet()
    rollout, actions, _ = advance(f.rollout, Observation(None), 1.0)
    assert [type(a) for a in actions if not isinstance(a, Notify)] == [Publish]
    for now in range(2, 20):  # the fleet never confirms: the engine waits on step 0 and asks again
        rollout, actions, _ = advance(rollout, Observation(None), float(now))
        assert rollout.step == 0 and any(isinstance(a, Publish) for a in actions)


def test_background_analysis_aborts_even_while_paused() -> None:
    f = fleet()
    f.run_until({Phase.PAUSED})  # the pause-until-promoted step, at 50 %
    f.run_until({Phase.ABORTED}, canary_errors=0.2)
    assert "background analysis errors" in f.rollout.reason


def test_inconclusive_analysis_pauses_for_a_human() -> None:
    raw = {"steps": [{"setWeight": 10}, {"analysis": {"metrics": [
        {"name": "success", "condition": "success_rate >= 0.99", "interval": 5, "minRequests": 1000,
         "inconclusiveLimit": 2}]}}]}
    f = fleet(raw)
    f.run_until({Phase.PAUSED}, requests=10)
    assert "inconclusive 2/2" in f.rollout.reason and "fewer than 1000" in f.rollout.reason
    f.rollout, _ = command(f.rollout, Command.RESUME, "tester", f.now)
    f.run_until({Phase.SUCCEEDED}, requests=3000)


def test_webhook_gates_pass_or_abort_after_their_retries() -> None:
    raw = {"steps": [{"webhook": {"url": "http://127.0.0.1:1/gate", "retries": 2, "interval": "5s"}},
                     {"setWeight": 20}]}
    f = fleet(raw)
    f.tick()  # the start route (100 % stable) is published first: no step before the fleet serves it
    actions = f.tick()
    calls = [a for a in actions if isinstance(a, CallGate)]
    assert len(calls) == 1 and calls[0].url == "http://127.0.0.1:1/gate"
    f.tick()  # no answer yet: the same call is asked for (the shell makes each key once)
    f.gates[calls[0].key] = (False, "503")
    f.tick()
    assert f.rollout.phase is Phase.PROGRESSING and f.rollout.gate.attempt == 2
    assert not any(isinstance(a, CallGate) for a in f.tick())  # waits the interval
    for _ in range(5):
        again = [a for a in f.tick() if isinstance(a, CallGate)]
        if again:
            break
    assert again and again[0].key != calls[0].key
    f.gates[again[0].key] = (False, "500")
    f.tick()
    assert f.rollout.phase.value == "Aborted" and "failed 2/2: 500" in f.rollout.reason
    ok = fleet(raw)
    ok.tick()
    key = next(a for a in ok.tick() if isinstance(a, CallGate)).key
    ok.gates[key] = (True, "200")
    ok.run_until({Phase.SUCCEEDED})


def test_blue_green_previews_swaps_at_once_and_undo_is_instant() -> None:
    raw = {"strategy": "blueGreen", "previewHeader": {"x-preview": "1"},
           "prePromotionAnalysis": {"templates": ["errors"]}, "scaleDownDelay": "5m"}
    f = fleet(raw)
    f.run_until({Phase.PAUSED})  # preview route served, pre-promotion analysis passed on the preview's requests
    assert f.applied is not None and f.applied.cohorts[0][0] == "preview" and f.applied.weight("v2") == 0
    assert any("pre-promotion analysis errors: every metric passed" in t.why for t in f.rollout.history)
    f.rollout, _ = command(f.rollout, Command.PROMOTE_FULL, "tester", f.now)
    f.tick()
    assert f.applied == Route((("v1", 0), ("v2", PPM)), (), "v2")  # one swap to 100 %
    f.tick()
    assert f.rollout.phase is Phase.SUCCEEDED
    f.rollout, _ = command(f.rollout, Command.UNDO, "tester", f.now)
    f.tick()
    assert f.rollout.phase is Phase.ABORTED and f.applied == Route((("v1", PPM), ("v2", 0)), (), "v2")


def test_blue_green_with_auto_promotion_and_post_promotion_analysis() -> None:
    raw = {"strategy": "blueGreen", "autoPromotionSeconds": 10, "postPromotionAnalysis": {"templates": ["errors"]}}
    good = fleet(raw)
    good.run_until({Phase.SUCCEEDED})
    assert any("post-promotion analysis errors: every metric passed" in t.why for t in good.rollout.history)
    bad = fleet(raw)
    bad.run_until({Phase.ABORTED}, canary_errors=0.5)
    assert "post-promotion analysis" in bad.rollout.reason
    bad.tick()
    assert bad.applied == Route((("v1", PPM), ("v2", 0)), (), "v2")


def at_phase(phase: Phase) -> Rollout:
    """A rollout in ``phase``, reached by the engine itself."""
    f = fleet()
    if phase is Phase.PENDING:
        return f.rollout
    if phase is Phase.PROGRESSING:
        f.tick()
        return f.rollout
    if phase is Phase.PAUSED:
        f.run_until({Phase.PAUSED})
        return f.rollout
    if phase is Phase.ABORTED:
        f.run_until({Phase.ABORTED}, canary_errors=0.5)
        return f.rollout
    f.rollout, _ = command(f.rollout, Command.PROMOTE_FULL, "t", 0.0)
    f.run_until({Phase.SUCCEEDED})
    return f.rollout


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("cmd", list(Command))
def test_every_command_in_every_phase(phase: Phase, cmd: Command) -> None:
    before = at_phase(phase)
    saved = json.dumps(before.saved(), sort_keys=True)
    if cmd not in TRANSITIONS[phase]:
        with pytest.raises(RolloutError) as refused:
            command(before, cmd, "tester", 1000.0)
        assert refused.value.status == 409 and before.phase.value in refused.value.message
        assert json.dumps(before.saved(), sort_keys=True) == saved  # nothing changed
        return
    after, _ = command(before, cmd, "tester", 1000.0)
    assert after.phase is TRANSITIONS[phase][cmd]
    assert after.history[-1].who == "tester" and after.history[-1].at == 1000.0
    if cmd is Command.ABORT:
        assert after.route == Route((("v1", PPM), ("v2", 0)), (), "v2")
    if cmd is Command.RETRY:
        assert after.step == 0 and after.retries == 1
    if cmd is Command.PROMOTE:
        assert after.step == before.step + 1


def test_undo_is_refused_once_the_old_version_left_the_routing() -> None:
    f = fleet({"steps": [{"setWeight": 50}], "scaleDownDelay": 5})
    f.run_until({Phase.SUCCEEDED})
    for _ in range(10):
        f.tick()
    assert f.rollout.retired
    with pytest.raises(RolloutError, match="left the routing"):
        command(f.rollout, Command.UNDO, "tester", f.now)


def test_a_restart_at_any_tick_resumes_where_it_was() -> None:
    """Save and restore (as a kill -9 and a restart would) at every step, and at every tick of the timed
    pause: the rollout goes on where it was, the pause keeps its absolute deadline, a window in
    progress starts afresh, and an aborted rollout stays aborted."""
    f = fleet()
    deadlines, steps = set(), set()
    for _ in range(400):
        if f.rollout.phase is Phase.PAUSED:
            break
        f.tick()
        if f.rollout.step not in steps or f.rollout.pause_until is not None:
            steps.add(f.rollout.step)
            f.rollout = restarted(Rollout.restored(json.loads(json.dumps(f.rollout.saved())), "state.json"))
        if f.rollout.pause_until is not None:
            deadlines.add(f.rollout.pause_until)
    assert f.rollout.phase is Phase.PAUSED and f.rollout.reason == "pause step: until promoted"
    assert steps == set(range(len(f.rollout.spec.steps) - 1))
    assert len(deadlines) == 1  # the pause's deadline survived every restart unchanged
    started = next(t.at for t in f.rollout.history if "setWeight 10%" in t.why)
    analysed = next(t.at for t in f.rollout.history if "every metric passed" in t.why)
    assert analysed - started >= 20  # two whole 10 s windows after the restart on entering the step
    aborted = at_phase(Phase.ABORTED)
    again = Rollout.restored(json.loads(json.dumps(aborted.saved())))
    assert again.phase is Phase.ABORTED and again.route == aborted.route
    rollout, _, _ = advance(again, Observation(again.route), 10_000.0)
    assert rollout.phase is Phase.ABORTED


def test_twenty_healthy_canaries_no_false_rollback() -> None:
    for seed in range(20):
        f = fleet({**CANARY, "steps": list(CANARY["steps"])[:-1]})  # no manual pause
        f.rng = random.Random(seed)
        f.run_until({Phase.SUCCEEDED, Phase.ABORTED}, requests=200, canary_errors=0.001)
        assert f.rollout.phase is Phase.SUCCEEDED, (seed, f.rollout.reason)


@pytest.mark.parametrize(("raw", "field"), [
    ({"steps": []}, "rollouts.demo.steps"),
    ({"steps": [{"setWeight": 101}]}, "rollouts.demo.steps[0].setWeight"),
    ({"steps": [{"setWeight": 1, "pause": {}}]}, "rollouts.demo.steps[0]"),
    ({"steps": [{"pause": {"duration": "soon"}}]}, "rollouts.demo.steps[0].pause.duration"),
    ({"steps": [{"analysis": {"templates": ["nope"]}}]}, "rollouts.demo.steps[0].analysis.templates[0]"),
    ({"steps": [{"analysis": {"metrics": [{"name": "x", "condition": "eval(1)"}]}}]},
     "rollouts.demo.steps[0].analysis.metrics[0].condition"),
    ({"steps": [{"setHeaderRoute": {"name": "t", "match": {"headers": {"x": {"regex": "("}}}}}]},
     "rollouts.demo.steps[0].setHeaderRoute.match.headers.x"),
    ({"strategy": "linear", "steps": [{"setWeight": 1}]}, "rollouts.demo.strategy"),
    ({"strategy": "blueGreen", "steps": [{"setWeight": 1}]}, "rollouts.demo.steps"),
    ({"steps": [{"setWeight": 1}], "previewHeader": "x"}, "rollouts.demo.previewHeader"),
    ({"steps": [{"setWeight": 1}], "webhooks": ["ftp://x"]}, "rollouts.demo.webhooks[0]"),
])
def test_bad_specs_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        spec(raw)
    assert error.value.path.startswith(field), error.value


def test_specs_compile_and_keep_what_they_use() -> None:
    compiled = spec()
    assert compiled.steps[-1] == SetWeight(PPM) and compiled.steps[1] == SetWeight(100_000)  # 100 % added at the end
    assert set(compiled.raw["templates"]) == {"errors"}
    again = compile_spec(Reader("state.json"), compiled.raw, "rollouts.demo")  # no config templates needed
    assert again == replace(compiled, raw=again.raw) and again.raw == compiled.raw
    assert spec({"steps": [{"setWeight": {"ppm": 100}}]}).steps[0].ppm == 100  # type: ignore[union-attr]
    assert spec({"steps": [{"setWeight": 0.01}]}).steps[0].ppm == 100  # type: ignore[union-attr]
