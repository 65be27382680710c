"""The controller's rollouts: the engine's state for each service, kept in the state file beside the
routing state, and the loop that advances them.

The engine decides (``controller.engine.rollout``); this shell observes and acts:

- *observe*: the route a rollout asks for is ``applied`` when the current generation's rules for the
  service are exactly that route and every live proxy serves that generation; the counts are the
  live proxies' last reports (proxies report every ``REPORT_EVERY`` seconds while a rollout runs);
- *act*: ``Publish`` commits the route through the writer (only if the rules differ, so asking again
  is free), webhooks are called in tasks (each gate key once), measurements are counted for metrics.

Persist, then apply: a rollout's new state is written in the same state-file write as the generation
it publishes (the writer's ``persist`` writes ``saved()``, which includes the rollouts), or alone when
no routing changes. A command that cannot be persisted is refused (507) and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from controller.engine import rollout as engine
from controller.engine.analysis import Result, Run
from controller.engine.counts import sample_of
from controller.engine.rollout import Command, Observation, Phase, Rollout, RolloutError
from controller.engine.route import PPM, Route, rules_for, stable_of
from controller.engine.spec import Analysis, Pause, compile_spec, step_text
from turnout.core import overlay
from turnout.core.errors import ChangeError, ConfigError
from turnout.core.overlay import Overlay
from turnout.core.reader import Reader
from turnout.core.writer import Writer

from . import sources
from .proxies import LIVE_FOR, Proxies

__all__ = ["REPORT_EVERY", "Book"]

log = logging.getLogger("turnout")

REPORT_EVERY = 1.0  # seconds between a proxy's reports while a rollout runs (the watch answers that soon)
TICK = 1.0  # the loop's longest sleep


class Book:
    def __init__(self, writer: Writer, proxies: Proxies, clock: Callable[[], float],
                 persist: Callable[[dict[str, Any]], None], source: str) -> None:
        """``clock``: wall-clock seconds (deadlines survive restarts); ``persist``: the store's write."""
        self.writer = writer
        self.proxies = proxies
        self.clock = clock
        self.store_write = persist
        self.source = source
        self.specs: Mapping[str, Any] = {}  # the config's rollouts, by service (raw)
        self.templates: Mapping[str, Any] = {}
        self.rollouts: dict[str, Rollout] = {}  # the latest rollout of each service, active or ended
        self.numbers: dict[str, int] = {}  # per service: how many rollouts it had (the id's number)
        self.gates: dict[str, tuple[bool, str]] = {}
        self.calling: set[str] = set()
        self.measured: Counter[tuple[str, str, str]] = Counter()  # (service, metric, result) since start
        self.woken = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._saved = ""
        self.started = asyncio.get_running_loop().time()
        self.expected: set[str] | None = set()  # the proxies to hear from before rollouts advance
        self.extra: dict[str, Any] = {}  # what else lives beside the rollouts in the state file (deploys)

    # -- persistence

    def saved(self) -> dict[str, Any]:
        fleet = sorted(p.id for p in self.proxies.live(self._monotonic())) if self.expected is None else \
            sorted(self.expected)
        return {"rollouts": {service: r.saved() for service, r in self.rollouts.items()}, "numbers": self.numbers,
                "fleet": fleet, **self.extra}

    def persist_routing(self, routing: dict[str, Any]) -> None:
        """The writer's persist: its state and the rollouts, in one write."""
        self.store_write({**routing, "rollouts": self.saved()})

    def restore(self, saved: Mapping[str, Any] | None) -> None:
        data = (saved or {}).get("rollouts") or {}
        self.numbers = {str(k): int(v) for k, v in (data.get("numbers") or {}).items()}
        self.expected = {str(p) for p in data.get("fleet", [])}
        self.extra = {key: data[key] for key in ("deploys",) if key in data}
        for service, entry in (data.get("rollouts") or {}).items():
            try:
                self.rollouts[service] = engine.restarted(Rollout.restored(entry, self.source))
            except (ConfigError, KeyError, TypeError, ValueError) as exc:
                log.error("rollout of %s in the state file cannot be read (%s): left out", service, exc)
        self._saved = json.dumps(self.saved(), sort_keys=True)

    def configure(self, specs: Mapping[str, Any], templates: Mapping[str, Any]) -> None:
        self.specs, self.templates = specs, templates

    def _commit(self, candidate: dict[str, Rollout], publish: tuple[Rollout, Route] | None,
                extra: Callable[[Any, Overlay], Overlay] | None = None, what: str = "") -> None:
        """Make ``candidate`` the rollouts: written with the generation ``publish`` makes, or alone. On
        any failure the rollouts are as before and the error is raised."""
        before = self.rollouts
        self.rollouts = candidate
        try:
            if publish is None or not self._publish(*publish, extra, what):
                self._write_if_changed()
        except (ChangeError, OSError):
            self.rollouts = before
            raise
        self._saved = json.dumps(self.saved(), sort_keys=True)

    def _write_if_changed(self) -> None:
        now = json.dumps(self.saved(), sort_keys=True)
        if now != self._saved:
            try:
                self.store_write({**self.writer.desired.saved(), "rollouts": self.saved()})
            except OSError as exc:
                raise ChangeError(507, f"cannot write the state file: {exc.strerror or exc}; nothing was changed",
                                  "state file") from None
            self._saved = now

    def persist_extra(self) -> None:
        """Write ``extra`` (a deploy's progress) with the rest, if it changed."""
        self._write_if_changed()

    def _publish(self, rollout: Rollout, route: Route, extra: Callable[[Any, Overlay], Overlay] | None,
                 what: str) -> bool:
        """Commit ``route`` as a generation if the service's rules (or ``extra``) differ. Whether it did."""
        document = self.writer.desired.document()
        service = (document.get("services") or {}).get(rollout.service)
        if not isinstance(service, dict):
            raise ChangeError(404, f"no service {rollout.service!r}", "service")
        rules = overlay.rules_of(service)
        wanted = rules_for(rules, route)
        if wanted == rules and extra is None:
            return False

        def make(doc: Any, old: Overlay) -> Overlay:  # ``extra`` adds a version; it leaves the rules alone
            return overlay.replace_rules(doc, extra(doc, old) if extra is not None else old, rollout.service, wanted)

        self.writer.change(f"rollout {rollout.id}", what or f"rollout {rollout.id}: {_route_text(route)}", make)
        return True

    # -- commands

    def start(self, service: str, to: str, endpoints: list[str] | None, raw_spec: Any, who: str) -> Rollout:
        """A new rollout of ``service`` to version ``to`` (added with ``endpoints`` if it is new), by the
        config's spec for the service or by ``raw_spec``; its start route is published before the answer."""
        current = self.rollouts.get(service)
        if current is not None and current.active:
            raise ChangeError(409, f"rollout {current.id} of {service} is {current.phase.value}: abort it or let it "
                              "end first", "service")
        document = self.writer.desired.document()
        entry = (document.get("services") or {}).get(service)
        if not isinstance(entry, dict):
            raise ChangeError(404, f"no service {service!r}", "service")
        source, where = "<request>", "spec"
        if raw_spec is None:
            raw_spec, source, where = self.specs.get(service), self.source, f"rollouts.{service}"
            if raw_spec is None:
                raise ChangeError(422, f"no rollout spec for {service}: define rollouts.{service} in the controller "
                                  "config, or give spec in the request", "spec")
        try:
            spec = compile_spec(Reader(source), copy.deepcopy(raw_spec), where, self.templates)
        except ConfigError as exc:
            raise ChangeError(422, exc.message, exc.path) from None
        rules = overlay.rules_of(entry)
        stable = stable_of(rules)
        if stable is None:
            raise ChangeError(409, f"{service}'s last rule neither splits nor names a version", "service")
        versions = entry.get("versions") or {}
        if to not in versions and not endpoints:
            raise ChangeError(422, f"{service} has no version {to!r}: give its endpoints to add it", "endpoints")
        if stable == to:
            raise ChangeError(409, f"{service} already serves {to} as its stable version", "to")
        number = self.numbers.get(service, 0) + 1
        created = engine.start(f"{service}-{number}", service, stable, to, spec, who, self.clock())
        others = [f"{v} ({w})" for v, w in (rules[-1].get("split") or {}).items() if w and v not in (stable, to)]
        if others:  # a rollout moves one stable version to one new one: the rest of the split goes to stable
            created = engine.note(created, who, self.clock(), f"{', '.join(others)} left the split for {stable}")
        add = None
        if endpoints:
            body = {"endpoints": list(endpoints)}
            add = lambda doc, old: overlay.set_version(doc, old, service, to, body)  # noqa: E731
        numbers_before = dict(self.numbers)
        self.numbers[service] = number
        try:
            self._commit({**self.rollouts, service: created}, (created, created.route), add,
                         f"rollout {created.id}: start {stable} -> {to}" + (f" at {', '.join(endpoints)}"
                                                                             if endpoints else ""))
        except (ChangeError, OSError):
            self.numbers = numbers_before
            raise
        log.info("rollout %s: %s -> %s started by %s (%s)", created.id, stable, to, who, spec.strategy)
        self.woken.set()
        return self.rollouts[service]

    def command(self, service: str, cmd: Command, who: str) -> Rollout:
        current = self.get(service)
        try:
            changed, actions = engine.command(current, cmd, who, self.clock())
        except RolloutError as exc:
            raise ChangeError(exc.status, exc.message, "command") from None
        # Advance at once, so that an abort or a promotion is published before the answer.
        advanced, more, _ = engine.advance(changed, self._observe(changed), self.clock())
        self._apply(advanced, [*actions, *more])
        log.info("rollout %s: %s by %s -> %s", current.id, cmd.value, who, advanced.phase.value)
        self.woken.set()
        return self.rollouts[service]

    def retire_canary(self, service: str, who: str) -> Rollout:
        """An aborted rollout's canary leaves the split (a deploy removes its containers next)."""
        try:
            retired = engine.retire_canary(self.get(service), who, self.clock())
        except RolloutError as exc:
            raise ChangeError(exc.status, exc.message, "command") from None
        advanced, actions, _ = engine.advance(retired, self._observe(retired), self.clock())
        self._apply(advanced, actions)
        return self.rollouts[service]

    def served(self, service: str) -> bool:
        """Whether every live proxy serves the route the service's rollout asks for."""
        current = self.get(service)
        return self._observe(current).applied == current.route

    def get(self, service: str) -> Rollout:
        found = self.rollouts.get(service)
        if found is None:
            raise ChangeError(404, f"no rollout of {service!r}", "service")
        return found

    def active(self, service: str | None = None) -> list[Rollout]:
        return [r for r in self.rollouts.values() if r.active and (service is None or r.service == service)]

    def report_every(self) -> float | None:
        """How often proxies should report: often while a rollout runs, else as they like."""
        return REPORT_EVERY if any(not r.over for r in self.rollouts.values()) else None

    # -- the loop

    async def run(self) -> None:
        """Advance every rollout that is not over: at its wake-up time, at least every ``TICK``, and when
        woken (a command, a gate's answer, a proxy's poll: ``woken.set``)."""
        async with aiohttp.ClientSession() as session:
            self.session = session
            while True:
                self.woken.clear()
                wake = await self.tick()
                delay = TICK if wake is None else max(0.05, min(TICK, wake - self.clock()))
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that comes
                # as the event fires, and this loop then never stops (seen: a controller hung at SIGTERM).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.woken.wait()

    def settled(self) -> bool:
        """Whether the controller knows its fleet: every proxy that was live when the state was last
        written has polled again, or ``LIVE_FOR`` has passed since the start. Before that, "every live
        proxy serves it" could be true of nobody, and a window's first sample would miss proxies."""
        if self.expected is None:
            return True
        live = {p.id for p in self.proxies.live(self._monotonic())}
        if self.expected <= live or self._monotonic() - self.started >= LIVE_FOR:
            self.expected = None
        return self.expected is None

    async def tick(self) -> float | None:
        if not self.settled():
            return None
        wakes = []
        for service, current in list(self.rollouts.items()):
            if current.over and self._observe(current).applied == current.route:
                continue
            values = {}
            if self.session is not None:
                for metric in engine.due(current, self.clock()):
                    values[metric.name] = await sources.fetch(self.session, metric)
            if self.rollouts.get(service) is not current:  # a command came in while fetching
                continue
            seen = self._observe(current)
            seen = Observation(seen.applied, seen.sample, dict(self.gates), values)
            advanced, actions, wake = engine.advance(current, seen, self.clock())
            try:
                self._apply(advanced, actions)
            except ChangeError as exc:
                log.error("rollout %s: cannot publish its route: %s%s", current.id, exc.message,
                          f" ({exc.field})" if exc.field else "")
                if exc.status == 422 and current.active:  # the route is not valid config: it never will be
                    self._abandon(current, exc.message)
            if wake is not None:
                wakes.append(wake)
        return min(wakes) if wakes else None

    def _abandon(self, current: Rollout, why: str) -> None:
        with contextlib.suppress(RolloutError, ChangeError, OSError):
            aborted, actions = engine.command(current, Command.ABORT, "controller", self.clock())
            self._apply(aborted, actions)
            log.error("rollout %s aborted: its route cannot be published (%s)", current.id, why)

    def _apply(self, advanced: Rollout, actions: list[engine.Action]) -> None:
        routes = [a.route for a in actions if isinstance(a, engine.Publish)]  # the engine asks at most once
        self._commit({**self.rollouts, advanced.service: advanced}, (advanced, routes[-1]) if routes else None)
        for action in actions:
            if isinstance(action, engine.Measured):
                m = action.measurement
                self.measured[(action.service, m.metric, m.result.value)] += 1
                log.info("rollout %s: %s %s: %s", advanced.id, m.metric, m.result.value, m.detail)
            elif isinstance(action, engine.CallGate) and action.key not in self.calling:
                self.calling.add(action.key)
                self._spawn(self._gate(action))
            elif isinstance(action, engine.Notify):
                self._spawn(self._notify(action))

    async def _gate(self, action: engine.CallGate) -> None:
        if self.session is None:
            return
        self.gates[action.key] = await sources.call_gate(self.session, action.url, action.body)
        self.woken.set()

    async def _notify(self, action: engine.Notify) -> None:
        if self.session is not None:
            await sources.notify(self.session, action.url, action.event)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _observe(self, rollout: Rollout) -> Observation:
        document = self.writer.desired.document()
        service = (document.get("services") or {}).get(rollout.service)
        applied = None
        if isinstance(service, dict) and self.settled():
            rules = overlay.rules_of(service)
            if rules_for(rules, rollout.route) == rules and not self.proxies.waiting_for(self.writer.generation,
                                                                                          self._monotonic()):
                applied = rollout.route
        live = self.proxies.live(self._monotonic())
        return Observation(applied, sample_of(((p.id, p.stats) for p in live), rollout.service))

    def _monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    # -- views

    def view(self, rollout: Rollout, history: bool = False) -> dict[str, Any]:
        """A rollout as ``turnout rollout status`` and the API show it."""
        now = self.clock()
        steps = [*rollout.spec.steps, None]
        current = rollout.current
        view: dict[str, Any] = {
            "id": rollout.id, "service": rollout.service, "stable": rollout.stable, "canary": rollout.canary,
            "strategy": rollout.spec.strategy, "phase": rollout.phase.value, "step": rollout.step,
            "steps": [{"index": i, "step": step_text(s), "current": i == rollout.step and rollout.active,
                       "done": i < rollout.step or rollout.phase is Phase.SUCCEEDED} for i, s in enumerate(steps)],
            "reason": rollout.reason, "weight_percent": rollout.weight / (PPM / 100),
            "route": {"weights": {v: w / (PPM / 100) for v, w in rollout.route.weights},
                      "cohorts": [name for name, _ in rollout.route.cohorts]},
            "applied": self._observe(rollout).applied == rollout.route,
            "proxies": [{"proxy": p["proxy"], "live": p["live"], "generation": p["generation"],
                         "serves": p["converged"]} for p in self.proxies.status(self.writer.generation,
                                                                               self._monotonic())],
            "started_at": _iso(rollout.started_at),
        }
        if isinstance(current, Pause) and current.seconds is not None and rollout.pause_until is not None:
            view["pause_remaining"] = round(max(0.0, rollout.pause_until - now), 1)
        if rollout.warm_until is not None and rollout.phase is Phase.SUCCEEDED:
            view["warm_remaining"] = round(max(0.0, rollout.warm_until - now), 1)
        view["analysis"] = [_run_view(run, now) for run in (rollout.run, rollout.background) if run is not None]
        if isinstance(current, Analysis) and rollout.run is None and rollout.active:
            view["analysis"].append({"label": current.label, "metrics": []})
        if history:
            view["history"] = [{"at": _iso(t.at), "unix": t.at, "who": t.who, "phase": t.phase.value, "step": t.step,
                                "why": t.why} for t in rollout.history]
        return view


def _run_view(run: Run, now: float) -> dict[str, Any]:
    metrics = []
    for entry in run.metrics:
        last = entry.measurements[-1] if entry.measurements else None
        metrics.append({"metric": entry.metric.name, "condition": entry.metric.condition.text(),
                        "source": entry.metric.source,
                        "measurements": len(entry.measurements), "count": entry.metric.count,
                        "failed": entry.tally(Result.FAILED),
                        "failure_limit": entry.metric.failure_limit,
                        "last": None if last is None else {"result": last.result.value, "value": last.value,
                                                           "detail": last.detail},
                        "window_remaining": None if entry.ends_at is None else round(max(0.0, entry.ends_at - now), 1)})
    return {"label": run.label, "metrics": metrics}


def _route_text(route: Route) -> str:
    weights = ", ".join(f"{v}={w / (PPM / 100):g}%" for v, w in route.weights)
    return weights + (f"; cohorts {', '.join(name for name, _ in route.cohorts)} -> {route.target}"
                      if route.cohorts else "")


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
