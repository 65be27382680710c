"""The rollout engine: one state machine for every strategy, with no I/O and no clock.

Theory of operation. A rollout moves one service from its ``stable`` version to a ``canary`` through
the compiled steps of its spec (``spec.py``). The shell calls ``advance(rollout, observation, now)``
whenever something may have changed (a tick, a proxy's poll, a command) and gets back the next rollout,
the actions to perform and when to call again::

    advance(rollout, Observation(applied, sample, gates), now) -> (rollout', [Publish | CallGate | Notify |
                                                                              Measured], wake_at)

Rule 1: the engine never takes a step on a route the fleet does not serve. ``Observation.applied`` is
the route every live proxy serves (the shell's ``VerifyWeight``); while it differs from the rollout's
``route``, the engine asks for ``Publish(route)`` and waits. Publishing is idempotent: the shell
commits a generation only when the routing differs, so asking again (after a restart, say) is safe.

Rule 2: commands are a table (``TRANSITIONS``). ``command`` raises ``RolloutError`` (409) for a command
the phase does not take *before* anything changes, so a refused command changes nothing.

Phases: Pending (created, not yet started), Progressing (taking steps; a timed pause counts down here),
Paused (a pause step without duration, a user's pause, or an Inconclusive analysis: a human decides),
Succeeded (the canary is stable; the old version stays routable at 0 % until ``warm_until`` so that
``undo`` is instant, then leaves the split), Aborted (back to 100 % stable, by a command or a failed
analysis or gate; only ``retry`` leaves it, from step 0).

The route is derived from the state, never stored apart from it: Aborted is 100 % stable, Succeeded
100 % canary, otherwise the current weight and cohorts. So an abort returns every sticky user who was on
the canary to stable and moves nobody else (the bucket tables only move the canary's buckets back).

Analysis windows only count while the applied route is the rollout's; a weight change or a restart
starts every window afresh (a partial window never counts). Time comes in as ``now``; deadlines are
absolute, so a pause keeps its deadline across a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from turnout.core.errors import ChangeError
from turnout.core.reader import Reader

from .analysis import Measurement, Metric, Run, Verdict, start_run, tick, verdict
from .counts import Sample
from .route import PPM, Route
from .spec import Analysis, Pause, SetHeaderRoute, SetWeight, Spec, Step, Webhook, compile_spec, step_text

__all__ = ["ACTIVE", "TRANSITIONS", "Action", "CallGate", "Command", "Measured", "Notify", "Observation", "Phase",
           "Publish", "Rollout", "RolloutError", "Transition", "advance", "command", "due", "note", "restarted",
           "retire_canary", "start"]

HISTORY = 200  # transitions kept per rollout


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    ABORTED = "Aborted"


class Command(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"  # past the current step
    PROMOTE_FULL = "promote-full"  # straight to 100 %, skipping every step left (analysis included)
    ABORT = "abort"
    RETRY = "retry"
    UNDO = "undo"


# phase -> command -> the phase it leads to. Anything else is refused and changes nothing.
TRANSITIONS: dict[Phase, dict[Command, Phase]] = {
    Phase.PENDING: {Command.PAUSE: Phase.PAUSED, Command.PROMOTE_FULL: Phase.PROGRESSING,
                    Command.ABORT: Phase.ABORTED},
    Phase.PROGRESSING: {Command.PAUSE: Phase.PAUSED, Command.PROMOTE: Phase.PROGRESSING,
                        Command.PROMOTE_FULL: Phase.PROGRESSING, Command.ABORT: Phase.ABORTED},
    Phase.PAUSED: {Command.RESUME: Phase.PROGRESSING, Command.PROMOTE: Phase.PROGRESSING,
                   Command.PROMOTE_FULL: Phase.PROGRESSING, Command.ABORT: Phase.ABORTED},
    Phase.SUCCEEDED: {Command.UNDO: Phase.ABORTED},
    Phase.ABORTED: {Command.RETRY: Phase.PENDING},
}

ACTIVE = (Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED)


class RolloutError(ChangeError):
    """A command the rollout cannot take now; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message, "command")


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    who: str  # a user ("admin-api", X-Turnout-Actor), or "controller", "analysis", "webhook"
    phase: Phase
    step: int
    why: str

    def saved(self) -> dict[str, Any]:
        return {"at": self.at, "who": self.who, "phase": self.phase.value, "step": self.step, "why": self.why}

    @classmethod
    def restored(cls, data: Mapping[str, Any]) -> Transition:
        return cls(float(data["at"]), str(data["who"]), Phase(data["phase"]), int(data["step"]), str(data["why"]))


@dataclass(frozen=True, slots=True)
class Gate:
    attempt: int = 1
    retry_at: float | None = None  # after a failed attempt: when to try again
    last: str = ""  # what the last attempt answered


@dataclass(frozen=True, slots=True)
class Rollout:
    id: str  # "demo-3": the service and a number that grows with each rollout of it
    service: str
    stable: str
    canary: str
    spec: Spec
    started_at: float
    phase: Phase = Phase.PENDING
    step: int = 0  # index into spec.steps; len(spec.steps) is the finish
    entered: bool = False  # the current step's entry (weight set, pause deadline, analysis run) was made
    weight: int = 0  # the canary's ppm in the default split
    cohorts: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    pause_until: float | None = None
    run: Run | None = None  # the current step's blocking analysis
    background: Run | None = None
    gate: Gate = field(default_factory=Gate)
    warm_until: float | None = None  # Succeeded: the old version is routable at 0 % until then
    retired: bool = False  # Succeeded: the old version left the split; Aborted: the canary did
    reason: str = ""
    history: tuple[Transition, ...] = ()
    retries: int = 0  # how often it was retried (part of a gate call's key)

    @property
    def route(self) -> Route:
        if self.phase is Phase.ABORTED:
            if self.retired:
                return Route(((self.stable, PPM),), (), self.canary)
            return Route(((self.stable, PPM), (self.canary, 0)), (), self.canary)
        if self.phase is Phase.SUCCEEDED:
            if self.retired:
                return Route(((self.canary, PPM),), (), self.canary)
            return Route(((self.stable, 0), (self.canary, PPM)), (), self.canary)
        return Route(((self.stable, PPM - self.weight), (self.canary, self.weight)), self.cohorts, self.canary)

    @property
    def current(self) -> Step | None:
        """The current step (None: the finish)."""
        return self.spec.steps[self.step] if self.step < len(self.spec.steps) else None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    @property
    def over(self) -> bool:
        """Nothing left for the engine but to keep its route: ended, and no old version still warm."""
        return not self.active and not (self.phase is Phase.SUCCEEDED and not self.retired)

    def saved(self) -> dict[str, Any]:
        """Plain data for the state file. Analysis windows are not kept: after a restart they start afresh."""
        return {"id": self.id, "service": self.service, "stable": self.stable, "canary": self.canary,
                "spec": self.spec.raw, "started_at": self.started_at, "phase": self.phase.value, "step": self.step,
                "entered": self.entered, "weight": self.weight,
                "cohorts": [[name, dict(match)] for name, match in self.cohorts], "pause_until": self.pause_until,
                "run": _saved_run(self.run), "background": _saved_run(self.background),
                "gate": {"attempt": self.gate.attempt, "retry_at": self.gate.retry_at, "last": self.gate.last},
                "warm_until": self.warm_until, "retired": self.retired, "reason": self.reason,
                "history": [t.saved() for t in self.history], "retries": self.retries}

    @classmethod
    def restored(cls, data: Mapping[str, Any], source: str = "<state file>") -> Rollout:
        """A rollout as saved. Its spec is compiled again from the raw form it kept (``ConfigError`` if
        that no longer reads), and its analysis windows start afresh."""
        spec = compile_spec(Reader(source), data["spec"], f"rollouts.{data['service']}")
        rollout = cls(str(data["id"]), str(data["service"]), str(data["stable"]), str(data["canary"]), spec,
                      float(data["started_at"]), Phase(data["phase"]), int(data["step"]), bool(data["entered"]),
                      int(data["weight"]), tuple((str(n), dict(m)) for n, m in data.get("cohorts", [])),
                      data.get("pause_until"), None, None,
                      Gate(int(data["gate"]["attempt"]), data["gate"]["retry_at"], str(data["gate"]["last"])),
                      data.get("warm_until"), bool(data.get("retired")), str(data.get("reason", "")),
                      tuple(Transition.restored(t) for t in data.get("history", [])), int(data.get("retries", 0)))
        return replace(rollout, run=_restored_run(data.get("run"), rollout.current),
                       background=_restored_run(data.get("background"), spec.background))


def _saved_run(run: Run | None) -> list[Any] | None:
    return None if run is None else [[m.saved() for m in entry.measurements] for entry in run.metrics]


def _restored_run(saved: list[Any] | None, analysis: Step | Analysis | None) -> Run | None:
    """The run's measurements so far, with every window started afresh."""
    if saved is None or not isinstance(analysis, Analysis) or len(saved) != len(analysis.metrics):
        return None
    run = start_run(analysis.label, analysis.metrics)
    metrics = tuple(replace(entry, measurements=tuple(Measurement.restored(m) for m in taken))
                    for entry, taken in zip(run.metrics, saved, strict=True))
    return replace(run, metrics=metrics)


# -- what the shell observes, and what it is asked to do


@dataclass(frozen=True, slots=True)
class Observation:
    applied: Route | None  # the route every live proxy serves for the service (None: not verified)
    sample: Sample = field(default_factory=dict)  # cumulative counts of the service, per source and version
    gates: Mapping[str, tuple[bool, str]] = field(default_factory=dict)  # CallGate key -> (passed, detail)
    values: Mapping[str, float | None] = field(default_factory=dict)  # external metrics' numbers, by name


@dataclass(frozen=True, slots=True)
class Publish:
    route: Route


@dataclass(frozen=True, slots=True)
class CallGate:
    key: str  # one attempt: the shell calls each key once and reports it in Observation.gates
    url: str
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Notify:
    url: str
    event: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Measured:
    service: str
    measurement: Measurement


Action = Publish | CallGate | Notify | Measured


def start(rollout_id: str, service: str, stable: str, canary: str, spec: Spec, who: str, now: float) -> Rollout:
    if stable == canary:
        raise RolloutError(409, f"{service} already serves {canary} as its stable version")
    created = Rollout(rollout_id, service, stable, canary, spec, now)
    return _record(created, who, now, f"created: {stable} -> {canary} ({spec.strategy}, {len(spec.steps)} steps)")


def note(rollout: Rollout, who: str, now: float, why: str) -> Rollout:
    """A history entry that changes nothing else."""
    return _record(rollout, who, now, why)


def command(rollout: Rollout, cmd: Command, who: str, now: float) -> tuple[Rollout, list[Action]]:
    """Apply a user's command, or raise ``RolloutError`` and change nothing."""
    target = TRANSITIONS[rollout.phase].get(cmd)
    if target is None:
        allowed = ", ".join(c.value for c in TRANSITIONS[rollout.phase]) or "none"
        raise RolloutError(409, f"rollout {rollout.id} is {rollout.phase.value}: it cannot {cmd.value} "
                                f"(it can: {allowed})")
    if cmd is Command.UNDO and rollout.retired:
        raise RolloutError(409, f"rollout {rollout.id}: {rollout.stable} has left the routing already "
                                f"(scaleDownDelay {rollout.spec.scale_down_delay:g}s); start a rollout back to it")
    actions: list[Action] = []
    if cmd is Command.PAUSE:
        changed = replace(rollout, phase=target)
        return _moved(changed, rollout, who, now, f"paused by {who}", actions), actions
    if cmd is Command.RESUME:
        changed = replace(rollout, phase=target, run=_fresh(rollout.run), background=_fresh(rollout.background))
        if isinstance(rollout.current, Pause) and rollout.current.seconds is None and rollout.entered:
            changed = _next(changed)
        return _moved(changed, rollout, who, now, f"resumed by {who}", actions), actions
    if cmd is Command.PROMOTE:
        changed = _next(replace(rollout, phase=target, background=_fresh(rollout.background)))
        return _moved(changed, rollout, who, now, f"promoted by {who}: past {step_text(rollout.current)}",
                      actions), actions
    if cmd is Command.PROMOTE_FULL:
        changed = replace(rollout, phase=target, step=len(rollout.spec.steps), entered=False, run=None,
                          pause_until=None)
        return _moved(changed, rollout, who, now, f"fully promoted by {who}: straight to 100 %", actions), actions
    if cmd is Command.ABORT:
        return _abort(rollout, who, f"aborted by {who}", now, actions), actions
    if cmd is Command.RETRY:
        changed = replace(rollout, phase=target, step=0, entered=False, weight=0, cohorts=(), pause_until=None,
                          run=None, background=None, gate=Gate(), warm_until=None, retired=False,
                          retries=rollout.retries + 1)
        return _moved(changed, rollout, who, now, f"retried by {who}: from step 0", actions), actions
    changed = replace(rollout, phase=target, warm_until=None)  # UNDO
    return _moved(changed, rollout, who, now, f"undone by {who}: back to {rollout.stable}", actions), actions


def due(rollout: Rollout, now: float) -> list[Metric]:
    """The metrics of an external source (prometheus, web) whose window ends by ``now``: the shell
    reads their numbers before it calls ``advance`` (``Observation.values``)."""
    return [entry.metric for run in (rollout.run, rollout.background) if run is not None and rollout.active
            for entry in run.metrics
            if entry.metric.source != "proxies" and entry.ends_at is not None and now >= entry.ends_at]


def retire_canary(rollout: Rollout, who: str, now: float) -> Rollout:
    """An aborted rollout's canary leaves the split (its containers are about to go). Only ``retry``
    brings it back, and only if its version still exists."""
    if rollout.phase is not Phase.ABORTED:
        raise RolloutError(409, f"rollout {rollout.id} is {rollout.phase.value}: only an aborted rollout's canary "
                                "can leave the routing")
    if rollout.retired:
        return rollout
    return _record(replace(rollout, retired=True), who, now, f"{rollout.canary} left the routing")


def restarted(rollout: Rollout) -> Rollout:
    """After the controller restarted: analysis windows in progress start afresh."""
    return replace(rollout, run=_fresh(rollout.run), background=_fresh(rollout.background))


def advance(rollout: Rollout, seen: Observation, now: float) -> tuple[Rollout, list[Action], float | None]:
    actions: list[Action] = []
    r = rollout
    if r.phase is Phase.PENDING:
        r = _moved(replace(r, phase=Phase.PROGRESSING), r, "controller", now, "started", actions)
    if r.phase is Phase.PROGRESSING and not r.entered:
        r = _enter(r, now, actions)
    r = _background(r, seen, now, actions)
    for _ in range(len(r.spec.steps) + 2):  # each pass takes one step whose route the fleet serves
        if r.phase is not Phase.PROGRESSING or seen.applied != r.route:
            break
        r, moved = _progress(r, seen, now, actions)
        if not moved:
            break
        if r.phase is Phase.PROGRESSING and not r.entered:
            r = _enter(r, now, actions)
    if (r.phase is Phase.SUCCEEDED and not r.retired and r.warm_until is not None and now >= r.warm_until
            and seen.applied == r.route):
        r = _record(replace(r, retired=True, warm_until=None), "controller", now,
                    f"{r.stable} left the routing (scaleDownDelay {r.spec.scale_down_delay:g}s passed)")
    if seen.applied != r.route:
        actions.append(Publish(r.route))
    return r, actions, _wake_at(r, now)


# -- internals


def _enter(r: Rollout, now: float, actions: list[Action]) -> Rollout:
    """The entry of the current step: what it sets, before the fleet is asked to serve it."""
    step = r.current
    r = replace(r, entered=True, run=None, pause_until=None, gate=Gate())
    if step is None:  # the finish: 100 % to the canary, cohorts gone
        return replace(r, weight=PPM, cohorts=())
    if isinstance(step, SetWeight):
        return replace(r, weight=step.ppm)
    if isinstance(step, SetHeaderRoute):
        return replace(r, cohorts=(*(c for c in r.cohorts if c[0] != step.name), (step.name, step.match)))
    if isinstance(step, Pause):
        if step.seconds is None:
            return _moved(replace(r, phase=Phase.PAUSED), r, "controller", now, "pause step: until promoted", actions)
        return replace(r, pause_until=now + step.seconds)
    if isinstance(step, Analysis):
        return replace(r, run=start_run(step.label, step.metrics))
    return r  # a webhook: its first attempt is made by _progress


def _progress(r: Rollout, seen: Observation, now: float, actions: list[Action]) -> tuple[Rollout, bool]:
    """Whether the current step (its route served by the fleet) is done; if so, the rollout past it."""
    step = r.current
    if step is None:
        done = replace(r, phase=Phase.SUCCEEDED, warm_until=now + r.spec.scale_down_delay)
        return _moved(done, r, "controller", now, f"{r.canary} is stable: every step passed", actions), True
    if isinstance(step, SetWeight | SetHeaderRoute):
        why = f"step {r.step}: {step_text(step)} served by every live proxy"
        return _record(_next(r), "controller", now, why), True
    if isinstance(step, Pause):
        if r.pause_until is not None and now >= r.pause_until:
            return _record(_next(r), "controller", now, f"step {r.step}: {step_text(step)} ended"), True
        return r, False
    if isinstance(step, Analysis):
        assert r.run is not None
        run, taken = tick(r.run, seen.sample, r.canary, r.stable, _share(r), now, seen.values)
        actions.extend(Measured(r.service, m) for m in taken)
        r = replace(r, run=run)
        found, why = verdict(run)
        if found is Verdict.SUCCESSFUL:
            return _record(_next(r), "analysis", now, f"step {r.step}: {why}"), True
        if found is Verdict.FAILED:
            return _abort(r, "analysis", why, now, actions), True
        if found is Verdict.INCONCLUSIVE:
            paused = replace(r, phase=Phase.PAUSED, run=start_run(step.label, step.metrics))
            return _moved(paused, r, "analysis", now, why, actions), True
        return r, False
    return _gate(r, step, seen, now, actions)


def _gate(r: Rollout, step: Webhook, seen: Observation, now: float, actions: list[Action]) -> tuple[Rollout, bool]:
    if r.gate.retry_at is not None and now < r.gate.retry_at:
        return r, False
    key = f"{r.id}/{r.retries}/{r.step}/{r.gate.attempt}"
    answer = seen.gates.get(key)
    if answer is None:
        actions.append(CallGate(key, step.url, _event(r, "gate")))
        return r, False
    passed, detail = answer
    if passed:
        return _record(_next(r), "webhook", now, f"step {r.step}: {step_text(step)} passed: {detail}"), True
    if r.gate.attempt >= step.retries:
        return _abort(r, "webhook", f"{step_text(step)} failed {r.gate.attempt}/{step.retries}: {detail}", now,
                      actions), True
    return replace(r, gate=Gate(r.gate.attempt + 1, now + step.interval, detail)), False


def _background(r: Rollout, seen: Observation, now: float, actions: list[Action]) -> Rollout:
    """The background analysis, judged at every interval from ``starting_step`` on, paused or not."""
    spec = r.spec.background
    if spec is None or r.phase not in (Phase.PROGRESSING, Phase.PAUSED) or r.step < r.spec.starting_step:
        return r
    if seen.applied != r.route:  # a window only counts on a route the fleet serves
        return replace(r, background=_fresh(r.background))
    run, taken = tick(r.background or start_run(spec.label, spec.metrics), seen.sample, r.canary, r.stable,
                      _share(r), now, seen.values)
    actions.extend(Measured(r.service, m) for m in taken)
    r = replace(r, background=run)
    found, why = verdict(run)
    if found is Verdict.FAILED:
        return _abort(r, "analysis", why, now, actions)
    if found is Verdict.INCONCLUSIVE:
        fresh = start_run(spec.label, spec.metrics)
        if r.phase is Phase.PAUSED:
            return replace(r, background=fresh)
        return _moved(replace(r, phase=Phase.PAUSED, background=fresh), r, "analysis", now, why, actions)
    return r


def _share(r: Rollout) -> float | None:
    """The canary's expected share of the two versions' requests, for the sample-ratio check; None
    while cohorts send it requests whatever the weight."""
    return None if r.cohorts else r.route.share(r.canary, r.stable)


def _next(r: Rollout) -> Rollout:
    return replace(r, step=min(r.step + 1, len(r.spec.steps)), entered=False, run=None, pause_until=None, gate=Gate())


def _fresh(run: Run | None) -> Run | None:
    return None if run is None else run.restarted()


def _abort(r: Rollout, who: str, why: str, now: float, actions: list[Action]) -> Rollout:
    aborted = replace(r, phase=Phase.ABORTED, weight=0, cohorts=(), run=None, background=None, pause_until=None)
    return _moved(aborted, r, who, now, why, actions)


def _moved(changed: Rollout, before: Rollout, who: str, now: float, why: str, actions: list[Action]) -> Rollout:
    """``changed`` with its reason and history entry; phase changes are told to the rollout's webhooks."""
    recorded = _record(changed, who, now, why)
    if changed.phase is not before.phase:
        actions.extend(Notify(url, _event(recorded, "phase")) for url in changed.spec.webhooks)
    return recorded


def _record(r: Rollout, who: str, now: float, why: str) -> Rollout:
    return replace(r, reason=why, history=(*r.history, Transition(now, who, r.phase, r.step, why))[-HISTORY:])


def _event(r: Rollout, kind: str) -> dict[str, Any]:
    return {"kind": kind, "rollout": r.id, "service": r.service, "stable": r.stable, "canary": r.canary,
            "phase": r.phase.value, "step": r.step, "weight_percent": r.weight / 10_000, "reason": r.reason}


def _wake_at(r: Rollout, now: float) -> float | None:
    times = [r.pause_until if r.phase is Phase.PROGRESSING else None,
             r.gate.retry_at if r.phase is Phase.PROGRESSING else None,
             r.warm_until if r.phase is Phase.SUCCEEDED and not r.retired else None]
    for run in (r.run, r.background):
        times.append(run.wake_at() if run is not None and r.active else None)
    found = [t for t in times if t is not None]
    return max(now, min(found)) if found else None
