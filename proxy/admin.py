"""The admin API (aiohttp, its own listener; never reachable through a data listener).

Every route, reads included, needs ``Authorization: Bearer <token>`` (compared in constant time);
requests that carry an ``Origin`` header are refused, so a web page in an operator's browser cannot
drive it. Errors are JSON: ``{"error": "...", ...}``.

Routes so far (docs/admin-api.md):
    GET  /v1/state                                       routing state; ETag: the generation
    PUT  /v1/services/{service}/rules/{rule}/weights     {"weights": {"v1": 90, "v2": 10}}
    PUT  /v1/services/{service}/rules                    {"rules": [...]}  (the config's rule syntax)
    PUT  /v1/services/{service}/versions/{version}       {"endpoints": [...], "tls": {...}}  (add or replace)
    GET  /v1/generations                                 who changed what, when (the last 50)
    GET  /v1/generations/{a}/diff/{b}                    field-level differences of two generations
    POST /v1/explain                                     which service, rule, bucket, version, endpoint
    ...?dry_run=true on the PUTs                         which sticky users a change would move
    POST /v1/rollback                                    {"generation": N}: a new generation equal to N
    POST /v1/reload                                      re-read the config file and certificates (as SIGHUP)
    POST /v1/reset                                       {"services": [...], "flags": [...]} or {"all": true}
    GET  /v1/flags, PUT|DELETE /v1/flags/{key}           feature flags: list, create or replace, delete
    POST /v1/flags/{key}/enable|disable|kill             switch a flag (kill: off for everyone, at once)
    POST /ofrep/v1/evaluate/flags[/{key}]                OFREP evaluation (admin or read-only flags token)
    GET  /metrics                                        Prometheus text, all workers summed
    GET  /ready, /live                                   readiness (503 once draining), liveness

Every change validates the whole resulting config first; a bad one is a 4xx naming the field and
changes nothing. ``If-Match: <generation>`` makes a change fail with 409 if someone changed the state
since it was read. Who made a change comes from the ``X-Turnout-Actor`` header (default "admin-api").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from turnout.api import changes, openapi, tokens
from turnout.api.views import describe, describe_flags
from turnout.core import explain
from turnout.core.desired import Entry
from turnout.core.errors import ConfigError, TurnoutError
from turnout.core.model import Admin
from turnout.core.routing import RoutingState

from . import metrics
from .control import Control

__all__ = ["AdminBackend", "load_token", "make_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONVERGE_TIMEOUT = 10.0  # how long a change waits for every worker to serve it


class AdminBackend(Protocol):
    """What the admin API reads: one worker in this process (``Worker``) or a supervisor's workers
    (``Supervisor``)."""

    def routing_state(self) -> RoutingState: ...

    async def collect(self) -> list[dict[str, Any]]:
        """A fresh snapshot of each worker: counters, generation, endpoint health."""

    async def converge(self, generation: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until every worker serves ``generation``; per worker, where it is."""

    def ready(self) -> bool: ...

    def count_flag(self, key: str, variant: str | None) -> None:
        """Count one flag evaluation answered here (OFREP)."""


def load_token(admin: Admin, source: str) -> str:
    """The bearer token: from the named environment variable, else from the token file, which is
    created (mode 0600) with a random token if it does not exist yet."""
    return tokens.load(source, "admin", admin.token_env, admin.token_file, create=True)


def load_flags_token(admin: Admin, source: str) -> str | None:
    """The read-only token apps may use for OFREP, if the config names its environment variable."""
    if admin.flags_token_env is None:
        return None
    token = os.environ.get(admin.flags_token_env, "")
    if not token:
        raise ConfigError(source, "admin.flags_token_env", f"environment variable {admin.flags_token_env} is not set")
    return token


def error(status: int, message: str, **details: Any) -> web.Response:
    return web.json_response({"error": message, **details}, status=status)


def make_app(backend: AdminBackend, token: str, control: Control | None = None,
             flags_token: str | None = None, managed_by: str | None = None) -> web.Application:
    """``control``: the writer of a standalone proxy; ``managed_by``: the controller's URL of a managed
    one, whose routing changes answer 409 naming it (reads, explain, metrics and OFREP stay)."""
    expected = token.encode()
    readers = [expected] + ([flags_token.encode()] if flags_token else [])

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/ofrep/"):
            # Apps evaluate flags with the admin token or the read-only flags token (bearer or X-API-Key).
            presented = tokens.bearer(request.headers.get("Authorization", "")) or \
                request.headers.get("X-API-Key", "").encode()
            if not tokens.matches(presented, *readers):
                return web.json_response({"errorDetails": "missing or wrong token"}, status=401)
            return await handler(request)
        refused = tokens.refusal(request.path, request.method, request.headers, expected)
        if refused is not None:
            response = error(*refused)
            if refused[0] == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="turnout-admin"'
            return response
        try:
            return await handler(request)
        except TurnoutError as exc:  # the one error tree: each error carries its answer
            return error(exc.status, exc.message, field=exc.field)
        except web.HTTPException as exc:  # aiohttp's own 404/405: answered in JSON like the rest
            return error(exc.status, exc.reason)

    async def state(request: web.Request) -> web.Response:
        current = backend.routing_state()
        view = describe(current, await backend.collect(), control.overrides() if control is not None else {})
        return web.json_response(view, headers={"ETag": f'"{current.generation}"'})

    async def prometheus(request: web.Request) -> web.Response:
        reloads = control.reloads if control is not None else None
        return web.Response(body=metrics.render(await backend.collect(), reloads),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    async def ready(request: web.Request) -> web.Response:
        if backend.ready():
            return web.json_response({"ready": True})
        return error(503, "draining", ready=False)

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    app = web.Application(middlewares=[guard])
    if control is not None:
        _add_changes(app, control, backend)
    elif managed_by is not None:
        _refuse_changes(app, managed_by)
    _add_ofrep(app, backend)
    async def document(request: web.Request) -> web.Response:
        return web.json_response(openapi.DOCUMENT)

    async def explain_route(request: web.Request) -> web.Response:
        host, probe = changes.explain_request(changes.parse_body(await request.read(), "Explain"))
        return web.json_response(explain.explain(backend.routing_state(), host, probe))

    async def flags(request: web.Request) -> web.Response:
        return web.json_response({"generation": backend.routing_state().generation,
                                  "flags": describe_flags(backend.routing_state())})

    app.router.add_get("/v1/state", state)
    app.router.add_post("/v1/explain", explain_route)
    app.router.add_get("/v1/flags", flags)
    app.router.add_get("/v1/openapi.json", document)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/ready", ready)
    app.router.add_get("/live", live)
    return app


# ----------------------------------------------------------------------------------------------- changes


async def read_json(request: web.Request) -> Any:
    """The JSON body, or ValueError for anything that is not strict JSON (``changes.strict_json``)."""
    return changes.strict_json(await request.read())


def _add_changes(app: web.Application, control: Control, backend: AdminBackend) -> None:
    async def changed(entry: Entry) -> web.Response:
        """Answer once every worker serves the new generation, or say which did not in time."""
        workers = await backend.converge(entry.generation, CONVERGE_TIMEOUT)
        return web.json_response({**entry.summary(), "workers": workers,
                                  "converged": all(w["converged"] for w in workers)},
                                 headers={"ETag": f'"{entry.generation}"'})

    def serve(route: changes.Route) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            answer = route.run(control, changes.call(route, request.match_info, await request.read(), request.headers,
                                                     request.query, "admin-api"))
            return await changed(answer) if isinstance(answer, Entry) else web.json_response(answer)
        return handle

    for route in changes.ROUTES:
        app.router.add_route(route.method, route.path, serve(route))


def _refuse_changes(app: web.Application, controller: str) -> None:
    """A managed proxy: its routing is the controller's to change."""

    async def refuse(request: web.Request) -> web.Response:
        return error(409, f"this proxy's routing is managed by the controller at {controller}: change it there",
                     field="controller", controller=controller)

    for route in changes.ROUTES:
        app.router.add_route(route.method, route.path, refuse)


# ----------------------------------------------------------------------------------------------- OFREP


def _add_ofrep(app: web.Application, backend: AdminBackend) -> None:
    """OpenFeature remote evaluation (OFREP v1): stock OpenFeature SDKs evaluate Turnout's flags, on the
    same buckets the proxy routes with."""

    async def context_of(request: web.Request) -> tuple[dict[str, Any] | None, str, str]:
        """The evaluation context, or (None, errorCode, errorDetails)."""
        try:
            data = await read_json(request) if request.can_read_body else {}
        except ValueError:
            return None, "PARSE_ERROR", "the body must be JSON"
        if not isinstance(data, dict):
            return None, "PARSE_ERROR", "the body must be a JSON object"
        context = data.get("context", {})
        if not isinstance(context, dict):
            return None, "INVALID_CONTEXT", "context must be an object"
        key = context.get("targetingKey")
        if key is not None and not isinstance(key, str):
            return None, "INVALID_CONTEXT", "targetingKey must be a string"
        return context, "", ""

    def evaluated(key: str, context: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        result = backend.routing_state().flags.evaluate(key, context.get("targetingKey"), context)
        backend.count_flag(key, result.variant if result.error_code is None else "error")
        if result.error_code is not None:
            status = 404 if result.error_code == "FLAG_NOT_FOUND" else 400
            return status, {"key": key, "errorCode": result.error_code, "errorDetails": result.error_details or ""}
        return 200, {"key": key, "value": result.value, "reason": result.reason, "variant": result.variant,
                     "metadata": {}}

    async def one(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        context, code, details = await context_of(request)
        if context is None:
            return web.json_response({"key": key, "errorCode": code, "errorDetails": details}, status=400)
        status, body = evaluated(key, context)
        return web.json_response(body, status=status)

    async def bulk(request: web.Request) -> web.Response:
        context, code, details = await context_of(request)
        if context is None:
            return web.json_response({"errorCode": code, "errorDetails": details}, status=400)
        state = backend.routing_state()
        digest = hashlib.sha256(f"{state.generation}:{json.dumps(context, sort_keys=True, default=str)}".encode())
        etag = f'"{digest.hexdigest()[:32]}"'
        if etag in [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]:
            return web.Response(status=304, headers={"ETag": etag})
        flags = [evaluated(key, context)[1] for key in sorted(state.flags.flags)]
        return web.json_response({"flags": flags}, headers={"ETag": etag})

    app.router.add_post("/ofrep/v1/evaluate/flags/{key}", one)
    app.router.add_post("/ofrep/v1/evaluate/flags", bulk)
