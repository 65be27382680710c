"""The controller's admin API (aiohttp): the same routing changes as a proxy's admin API, for the whole
fleet, plus the watch endpoint proxies follow and the list of proxies.

Every route needs ``Authorization: Bearer <token>`` (constant time), the watch endpoint included;
requests with an ``Origin`` header are refused. Errors are JSON ``{"error", "field"}``.

    GET  /v1/state                 the fleet's routing state (ETag: the generation), with the proxies
    the change routes of ``turnout.api.changes`` (weights, rules, versions, flags; ?dry_run=true)
    POST /v1/rollback | /v1/reset | /v1/reload,  GET /v1/generations, /v1/generations/{a}/diff/{b}
    POST /v1/explain               how a request would be routed by the current generation
    GET  /v1/proxies               id, address, generation, lag, live, last seen, refusals
    GET|POST /v1/watch             a proxy's long poll (below)
    GET|POST /v1/rollouts, GET /v1/rollouts/{service}[/history], POST /v1/rollouts/{service}/{command}
                                   rollouts (``rollouts.Book``; a rollout owns its service's rules: 409)
    GET  /metrics                  the controller's own metrics;  GET /ready, /live

The watch: ``POST /v1/watch`` with a ``wire.Poll`` (its id, the generation it serves, what it refused,
its counters), or ``GET /v1/watch?proxy=ID&generation=G``. The answer is the ``wire.Snapshot`` of the
current generation as soon as it is newer than G and than the generation the proxy last refused (at
once if it already is), else ``204`` after ``wait`` seconds (default 30, at most 60; while a rollout
runs, ``REPORT_EVERY``, so that proxies report their counters that often). A change answers once
every live proxy serves it (or refused it), or after ``CONVERGE_TIMEOUT`` seconds saying which did not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from jsonschema import Draft7Validator
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from controller.engine.rollout import Command
from turnout.api import changes, tokens
from turnout.api.views import describe, describe_flags
from turnout.core import explain, routing, wire
from turnout.core.desired import Entry
from turnout.core.errors import ChangeError, TurnoutError, WireError
from turnout.core.writer import Writer

from .deploys import Deploys
from .openapi import COMMANDS, DEPLOY_START, DEPLOY_UNDO, DOCUMENT, ROLLOUT_START
from .proxies import LIVE_FOR, Proxies
from .rollouts import Book

__all__ = ["CONVERGE_TIMEOUT", "Fleet", "make_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONVERGE_TIMEOUT = 10.0
_START = Draft7Validator(ROLLOUT_START)
_DEPLOY = Draft7Validator(DEPLOY_START)
_UNDO = Draft7Validator(DEPLOY_UNDO)
WATCH_WAIT, WATCH_WAIT_MAX = 30.0, 60.0


class Fleet:
    """The receiver side of the controller's writer: the current snapshot, a mirror routing state for
    reads, and a wake-up for every open watch when a new generation is kept."""

    def __init__(self) -> None:
        self.snapshot: wire.Snapshot | None = None
        self.state: routing.RoutingState | None = None
        self.proxies = Proxies()
        self.changed = asyncio.Event()
        self.polled = asyncio.Event()  # set whenever a proxy says what it serves
        self.applied = 0  # generations shipped since start (a metric)
        self.on_poll: Callable[[], None] = lambda: None  # the rollouts' wake-up: new counts arrived
        self.report_every: Callable[[], float | None] = lambda: None  # how soon a watch answers, to get reports

    def apply(self, config: Any, snapshot: wire.Snapshot) -> None:
        self.state = routing.build(config, snapshot.generation, snapshot.tables)
        self.snapshot = snapshot
        self.applied += 1
        self.changed.set()
        self.changed = asyncio.Event()  # watchers hold the one that fired

    def close(self) -> None:
        """Stopping: every open watch answers now (its proxy polls the next controller)."""
        self.changed.set()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def poll_started(self, poll: wire.Poll, peer: str) -> Any:
        seen = self.proxies.poll_started(poll, peer, self.now())
        self.polled.set()
        self.on_poll()
        return seen

    async def converge(self, generation: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until every live proxy serves ``generation`` (or refused it). Woken by each poll, and
        at least every ``LIVE_FOR`` / 5 seconds, since a proxy can also stop being live by silence."""
        deadline = self.now() + timeout
        while self.proxies.waiting_for(generation, self.now()) and self.now() < deadline:
            self.polled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(LIVE_FOR / 5, max(0.0, deadline - self.now()))):
                    await self.polled.wait()
        return self.proxies.status(generation, self.now())


def error(status: int, message: str, **details: Any) -> web.Response:
    return web.json_response({"error": message, **details}, status=status)


def make_app(writer: Writer, fleet: Fleet, token: str, rollouts: Book,
             deploys: Deploys | None = None) -> web.Application:
    expected = token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = tokens.refusal(request.path, request.method, request.headers, expected)
        if refused is not None:
            response = error(*refused)
            if refused[0] == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="turnout-controller"'
            return response
        try:
            return await handler(request)
        except TurnoutError as exc:  # the one error tree: each error carries its answer
            return error(exc.status, exc.message, field=exc.field)
        except web.HTTPException as exc:  # aiohttp's own 404/405: answered in JSON like the rest
            return error(exc.status, exc.reason)

    def state() -> routing.RoutingState:
        assert fleet.state is not None
        return fleet.state

    async def changed(entry: Entry) -> web.Response:
        proxies = await fleet.converge(entry.generation, CONVERGE_TIMEOUT)
        live = [p for p in proxies if p["live"]]
        return web.json_response({**entry.summary(), "proxies": proxies,
                                  "converged": all(p["converged"] for p in live)},
                                 headers={"ETag": f'"{entry.generation}"'})

    def serve(route: changes.Route) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            call = changes.call(route, request.match_info, await request.read(), request.headers, request.query,
                                "controller-api")
            _refuse_under_rollout(rollouts, route, call)
            answer = route.run(writer, call)
            return await changed(answer) if isinstance(answer, Entry) else web.json_response(answer)
        return handle

    async def explain_route(request: web.Request) -> web.Response:
        host, probe = changes.explain_request(changes.parse_body(await request.read(), "Explain"))
        return web.json_response(explain.explain(state(), host, probe))

    async def state_view(request: web.Request) -> web.Response:
        view = describe(state(), [], writer.overrides())
        view.pop("workers")
        view["proxies"] = fleet.proxies.status(writer.generation, fleet.now())
        return web.json_response(view, headers={"ETag": f'"{state().generation}"'})

    async def flags(request: web.Request) -> web.Response:
        return web.json_response({"generation": state().generation, "flags": describe_flags(state())})

    async def proxies(request: web.Request) -> web.Response:
        """``?stats=true``: with each proxy's last reported counters (per worker, service and version)."""
        stats = request.query.get("stats", "").lower() in ("1", "true", "yes")
        return web.json_response({"generation": writer.generation,
                                  "proxies": fleet.proxies.status(writer.generation, fleet.now(), stats)})

    async def watch(request: web.Request) -> web.StreamResponse:
        poll = await _poll_of(request)
        try:
            wait = min(float(request.query.get("wait", WATCH_WAIT)), WATCH_WAIT_MAX)
        except ValueError:
            raise ChangeError(400, "wait is a number of seconds", "wait") from None
        wait = min(wait, fleet.report_every() or wait)  # while a rollout runs, proxies report this often
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = fleet.poll_started(poll, f"{peer[0]}:{peer[1]}" if peer else "")
        try:
            current = fleet.snapshot
            known = max(poll.generation, poll.refused)  # a refused generation is not sent again: the next one is
            if current is None or current.generation <= known:
                woken = fleet.changed
                try:
                    async with asyncio.timeout(max(0.0, wait)):
                        await woken.wait()
                except TimeoutError:
                    return web.Response(status=204)
                current = fleet.snapshot
                if current is None or current.generation <= known:  # woken by the controller stopping
                    return web.Response(status=204, headers={"Connection": "close"})
            assert current is not None
            return web.Response(body=wire.encode(current), content_type="application/json")
        finally:
            fleet.proxies.poll_ended(seen, fleet.now())

    async def rollout_list(request: web.Request) -> web.Response:
        return web.json_response({"rollouts": [rollouts.view(r) for r in rollouts.rollouts.values()],
                                  "specs": sorted(rollouts.specs)})

    async def rollout_start(request: web.Request) -> web.Response:
        body = changes.parse_body(await request.read(), _START)
        who = request.headers.get("X-Turnout-Actor", "controller-api")[:100]
        started = rollouts.start(body["service"], body["to"], body.get("endpoints"), body.get("spec"), who)
        await fleet.converge(writer.generation, CONVERGE_TIMEOUT)
        return web.json_response(rollouts.view(rollouts.get(started.service)), status=201)

    async def rollout_status(request: web.Request) -> web.Response:
        found = rollouts.get(request.match_info["service"])
        return web.json_response(rollouts.view(found, history=request.path.endswith("/history")))

    async def rollout_command(request: web.Request) -> web.Response:
        name = request.match_info["command"]
        if name not in COMMANDS:
            raise ChangeError(404, f"no rollout command {name!r} (commands: {', '.join(COMMANDS)})", "command")
        await request.read()
        who = request.headers.get("X-Turnout-Actor", "controller-api")[:100]
        changed = rollouts.command(request.match_info["service"], Command(name), who)
        await fleet.converge(writer.generation, CONVERGE_TIMEOUT)
        return web.json_response(rollouts.view(rollouts.get(changed.service)))

    def deploying() -> Deploys:
        if deploys is None:
            raise ChangeError(409, "this controller has no Docker engine: set providers.docker in its config",
                              "providers")
        return deploys

    async def deploy_start(request: web.Request) -> web.Response:
        body = changes.parse_body(await request.read(), _DEPLOY)
        who = request.headers.get("X-Turnout-Actor", "controller-api")[:100]
        started = await deploying().start(body["service"], body["image"], body["version"], body.get("replicas", 1),
                                          body.get("strategy", "canary"), body.get("pull", False), who,
                                          body.get("rolling"))
        return web.json_response(deploying().view(started), status=201)

    async def deploy_status(request: web.Request) -> web.Response:
        manager = deploying()
        return web.json_response(manager.view(manager.get(request.match_info["service"])))

    async def deploy_history(request: web.Request) -> web.Response:
        manager = deploying()
        return web.json_response({"revisions": [manager.view(r) for r in
                                                manager.revisions(request.match_info["service"])]})

    async def deploy_undo(request: web.Request) -> web.Response:
        raw = await request.read()
        body = changes.parse_body(raw, _UNDO) if raw.strip() else {}
        who = request.headers.get("X-Turnout-Actor", "controller-api")[:100]
        started = await deploying().undo(request.match_info["service"], body.get("toRevision"), who)
        return web.json_response(deploying().view(started), status=201)

    async def metrics(request: web.Request) -> web.Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Metrics(writer, fleet, rollouts))
        return web.Response(body=generate_latest(registry), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def document(request: web.Request) -> web.Response:
        return web.json_response(DOCUMENT)

    app = web.Application(middlewares=[guard])
    for route in changes.ROUTES:
        app.router.add_route(route.method, route.path, serve(route))
    app.router.add_post("/v1/explain", explain_route)
    app.router.add_get("/v1/state", state_view)
    app.router.add_get("/v1/flags", flags)
    app.router.add_get("/v1/proxies", proxies)
    app.router.add_get("/v1/rollouts", rollout_list)
    app.router.add_post("/v1/rollouts", rollout_start)
    app.router.add_get("/v1/rollouts/{service}", rollout_status)
    app.router.add_get("/v1/rollouts/{service}/history", rollout_status)
    app.router.add_post("/v1/rollouts/{service}/{command}", rollout_command)
    app.router.add_post("/v1/deploys", deploy_start)
    app.router.add_get("/v1/deploys/{service}", deploy_status)
    app.router.add_get("/v1/deploys/{service}/history", deploy_history)
    app.router.add_post("/v1/deploys/{service}/undo", deploy_undo)
    app.router.add_get("/v1/watch", watch)
    app.router.add_post("/v1/watch", watch)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", document)
    app.router.add_get("/ready", ready)
    app.router.add_get("/live", ready)
    return app


async def _poll_of(request: web.Request) -> wire.Poll:
    """The poll a watch request carries: a ``wire.Poll`` body (POST), or ``proxy`` and ``generation``."""
    if request.method == "POST":
        try:
            message = wire.decode(await request.read())
        except WireError as exc:
            raise ChangeError(400, f"the body must be a poll message: {exc}", "body") from None
        if not isinstance(message, wire.Poll):
            raise ChangeError(400, "the body must be a poll message", "body")
        if not message.proxy or len(message.proxy) > 200:
            raise ChangeError(422, "a poll names its proxy (1 to 200 characters)", "proxy")
        return message
    proxy, generation = request.query.get("proxy", ""), request.query.get("generation", "0")
    if not proxy or len(proxy) > 200:
        raise ChangeError(422, "name the proxy: ?proxy=ID (1 to 200 characters)", "proxy")
    if not generation.isdigit() or len(generation) > 18:
        raise ChangeError(400, "generation is a whole number", "generation")
    return wire.Poll(proxy, "", int(generation), 0, "", {})


def _refuse_under_rollout(rollouts: Book, route: changes.Route, call: changes.Call) -> None:
    """A rollout owns its service's rules: hand edits, a rollback or a reset of it would fight the
    rollout, so they wait until it ends (or is aborted). Versions (endpoints) stay editable."""
    if route.method == "GET":
        return
    service = call.params.get("service")
    if route.path.startswith("/v1/services/{service}/rules") and service is not None:
        held = rollouts.active(service)
    elif route.path == "/v1/rollback":
        held = rollouts.active()
    elif route.path == "/v1/reset":
        services, _ = changes.reset_request(call.body)
        held = [r for r in rollouts.active() if services is None or r.service in services]
    else:
        return
    if held:
        names = ", ".join(f"{r.id} of {r.service} ({r.phase.value})" for r in held)
        raise ChangeError(409, f"a rollout owns this routing: {names}; use turnout rollout promote, pause or "
                          "abort", "service")


class _Metrics:
    """The controller's own numbers, read at scrape time."""

    def __init__(self, writer: Writer, fleet: Fleet, rollouts: Book) -> None:
        self.writer, self.fleet, self.rollouts = writer, fleet, rollouts

    def collect(self) -> list[Metric]:
        now = self.fleet.now()
        generation = GaugeMetricFamily("turnout_controller_generation", "The generation the controller serves.")
        generation.add_metric([], self.writer.generation)
        live = GaugeMetricFamily("turnout_controller_proxies", "Proxies following the controller, by liveness.",
                                 labels=["live"])
        statuses = self.fleet.proxies.status(self.writer.generation, now)
        live.add_metric(["true"], sum(1 for s in statuses if s["live"]))
        live.add_metric(["false"], sum(1 for s in statuses if not s["live"]))
        lag = GaugeMetricFamily("turnout_controller_proxy_lag", "Generations a proxy is behind.", labels=["proxy"])
        for status in statuses:
            lag.add_metric([status["proxy"]], status["lag"])
        applied = CounterMetricFamily("turnout_controller_changes", "Generations made since the controller started.")
        applied.add_metric([], self.fleet.applied)
        info = GaugeMetricFamily("turnout_rollout_info", "Each service's latest rollout, by phase (1).",
                                 labels=["service", "rollout", "phase"])
        weight = GaugeMetricFamily("turnout_rollout_weight", "The percent of a service's split each version of its "
                                   "rollout is given.", labels=["service", "version"])
        for rollout in self.rollouts.rollouts.values():
            info.add_metric([rollout.service, rollout.id, rollout.phase.value], 1)
            for version, ppm in rollout.route.weights:
                weight.add_metric([rollout.service, version], ppm / 10_000)
        measured = CounterMetricFamily("turnout_analysis_measurements", "Analysis measurements since the controller "
                                       "started, by result.", labels=["service", "metric", "result"])
        for (service, metric, result), count in sorted(self.rollouts.measured.items()):
            measured.add_metric([service, metric, result], count)
        return [generation, live, lag, applied, info, weight, measured]
