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
import hmac
import json
import os
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from . import metrics, openapi
from .control import Control
from .core import explain, overlay
from .core.history import Entry
from .core.match import Request
from .core.model import Admin, Condition, ConfigError, Match, Sticky
from .core.overlay import ChangeError
from .core.routing import RoutingState

__all__ = ["AdminBackend", "load_token", "make_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONVERGE_TIMEOUT = 10.0  # how long a change waits for every worker to serve it


class AdminBackend(Protocol):
    """What the admin API reads: one worker in this process (``Worker``) or a supervisor's workers
    (``Fleet``)."""

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
    if admin.token_env is not None:
        token = os.environ.get(admin.token_env, "")
        if not token:
            raise ConfigError(source, "admin.token_env", f"environment variable {admin.token_env} is not set")
        return token
    path = Path(admin.token_file)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(token + "\n")
        return token
    except OSError as exc:
        raise ConfigError(source, "admin.token_file", f"cannot read {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(source, "admin.token_file", f"{path} is empty")
    return token


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
             flags_token: str | None = None) -> web.Application:
    expected = token.encode()
    readers = [expected] + ([flags_token.encode()] if flags_token else [])

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        presented = given.strip().encode() if scheme.lower() == "bearer" else b""
        if request.path.startswith("/ofrep/"):
            # Apps evaluate flags with the admin token or the read-only flags token (bearer or X-API-Key).
            presented = presented or request.headers.get("X-API-Key", "").encode()
            if not any(hmac.compare_digest(presented, allowed) for allowed in readers):
                return web.json_response({"errorDetails": "missing or wrong token"}, status=401)
            return await handler(request)
        if "Origin" in request.headers:
            return error(403, "requests from web pages (with an Origin header) are refused")
        if not hmac.compare_digest(presented, expected):
            response = error(401, "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="turnout-admin"'
            return response
        try:
            return await handler(request)
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
    _add_ofrep(app, backend)
    async def document(request: web.Request) -> web.Response:
        return web.json_response(openapi.DOCUMENT)

    app.router.add_get("/v1/state", state)
    app.router.add_get("/v1/openapi.json", document)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/ready", ready)
    app.router.add_get("/live", live)
    return app


# ----------------------------------------------------------------------------------------------- changes


async def read_json(request: web.Request) -> Any:
    """The JSON body, or ValueError for anything that is not strict JSON (RFC 8259): Python's parser
    also takes NaN and Infinity, recurses as deep as the nesting goes, and lets ``"\\ud800"`` (a lone
    surrogate) through, which nothing can encode later."""
    try:
        data = json.loads(await request.text(), parse_constant=_not_json)
        json.dumps(data, ensure_ascii=False).encode()  # UnicodeEncodeError is a ValueError
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return data


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _add_changes(app: web.Application, control: Control, backend: AdminBackend) -> None:
    validators = {name: openapi.validator(name)
                  for name in ("Weights", "Rules", "Version", "Rollback", "Reset", "Explain", "Flag", "Rollout")}

    async def body(request: web.Request, schema: str) -> dict[str, Any]:
        """The JSON body, checked against the schema the OpenAPI document publishes for it."""
        try:
            data = await read_json(request)
        except ValueError:
            raise ChangeError(400, "the body must be JSON", "body") from None
        if not isinstance(data, dict):
            raise ChangeError(400, "the body must be a JSON object", "body")
        problem = next(iter(sorted(validators[schema].iter_errors(data), key=lambda e: list(e.absolute_path))), None)
        if problem is not None:
            where = ".".join(str(part) for part in problem.absolute_path)
            if problem.validator == "required":
                where = ".".join([where, *(k for k in problem.validator_value if k not in problem.instance)]).strip(".")
            raise ChangeError(422, problem.message, where or "body")
        return data

    def if_match(request: web.Request) -> int | None:
        value = request.headers.get("If-Match")
        if value is None:
            return None
        cleaned = value.strip().removeprefix("W/").strip('"')
        if not cleaned.isdigit():
            raise ChangeError(400, f"If-Match must be a generation number, got {value!r}", "If-Match")
        return int(cleaned)

    async def changed(entry: Entry) -> web.Response:
        """Answer once every worker serves the new generation, or say which did not in time."""
        workers = await backend.converge(entry.generation, CONVERGE_TIMEOUT)
        return web.json_response({**entry.summary(), "workers": workers,
                                  "converged": all(w["converged"] for w in workers)},
                                 headers={"ETag": f'"{entry.generation}"'})

    def actor(request: web.Request) -> str:
        return request.headers.get("X-Turnout-Actor", "admin-api")[:100]

    async def apply(request: web.Request, what: str,
                    make: Callable[[Any, overlay.Overlay], overlay.Overlay]) -> web.Response:
        """Apply a change, or with ``?dry_run=true`` only say which sticky users it would move."""
        if request.query.get("dry_run", "").lower() in ("1", "true", "yes"):
            current = backend.routing_state()
            after = control.preview(make)
            return web.json_response({"dry_run": True, "generation": current.generation, "what": what,
                                      "splits": explain.moves(current, after)})
        return await changed(control.change(actor(request), what, make, if_match(request)))

    async def weights(request: web.Request) -> web.Response:
        service, rule = request.match_info["service"], request.match_info["rule"]
        given = (await body(request, "Weights"))["weights"]
        what = f"weights of {service}/{rule}: " + ", ".join(f"{k}={v}" for k, v in given.items())
        return await apply(request, what, lambda doc, old: overlay.set_weights(doc, old, service, rule, given))

    async def rules(request: web.Request) -> web.Response:
        service = request.match_info["service"]
        given = (await body(request, "Rules"))["rules"]
        return await apply(request, f"rules of {service}",
                     lambda doc, old: overlay.replace_rules(doc, old, service, given))

    async def version(request: web.Request) -> web.Response:
        service, name = request.match_info["service"], request.match_info["version"]
        data = await body(request, "Version")
        return await apply(request, f"endpoints of {service}/{name}",
                     lambda doc, old: overlay.set_version(doc, old, service, name, data))

    async def rollback(request: web.Request) -> web.Response:
        generation = (await body(request, "Rollback"))["generation"]
        return await changed(control.rollback(actor(request), generation, if_match(request)))

    async def reset(request: web.Request) -> web.Response:
        data = await body(request, "Reset")
        if data.get("all"):
            if data.get("services") or data.get("flags"):
                raise ChangeError(422, "'all' resets everything: give it alone", "all")
            return await changed(control.reset(actor(request), None, None, if_match(request)))
        if not data.get("services") and not data.get("flags"):
            raise ChangeError(422, "name services or flags to reset, or give all: true", "services")
        return await changed(control.reset(actor(request), data.get("services", []), data.get("flags", []),
                                           if_match(request)))

    async def explain_route(request: web.Request) -> web.Response:
        data = await body(request, "Explain")
        headers = {k.lower(): v for k, v in data.get("headers", {}).items()}
        cookies = data.get("cookies", {})
        if cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        host = str(data.get("host") or headers.get("host", ""))
        headers["host"] = host
        path = str(data.get("path", "/"))
        if not path.startswith("/"):
            raise ChangeError(422, "'path' must start with '/'", "path")
        probe = Request(str(data.get("method", "GET")).upper(), path, str(data.get("query", "")), headers,
                        str(data.get("client_ip", "127.0.0.1")))
        return web.json_response(explain.explain(backend.routing_state(), host, probe))

    async def reload(request: web.Request) -> web.Response:
        """SIGHUP by API: the config file (and its certificates) again, with the overlay on top."""
        return await changed(control.reload_file(actor(request)))

    async def flags(request: web.Request) -> web.Response:
        return web.json_response({"generation": backend.routing_state().generation,
                                  "flags": describe_flags(backend.routing_state())})

    async def put_flag(request: web.Request) -> web.Response:
        key, flag = request.match_info["key"], await body(request, "Flag")
        return await apply(request, f"flag {key}", lambda doc, old: overlay.set_flag(doc, old, key, flag))

    async def flag_rollout(request: web.Request) -> web.Response:
        key, rollout = request.match_info["key"], (await body(request, "Rollout"))["rollout"]
        what = f"rollout of flag {key}: " + ", ".join(f"{k}={v}%" for k, v in rollout.items())
        return await apply(request, what, lambda doc, old: overlay.set_flag_rollout(doc, old, key, rollout))

    async def delete_flag(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        return await apply(request, f"delete flag {key}", lambda doc, old: overlay.delete_flag(doc, old, key))

    def switch(enabled: bool, label: str) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            key = request.match_info["key"]
            return await apply(request, f"{label} flag {key}",
                               lambda doc, old: overlay.set_flag_enabled(doc, old, key, enabled))
        return handle

    async def generations(request: web.Request) -> web.Response:
        return web.json_response({"current": control.generation,
                                  "generations": [entry.summary() for entry in reversed(control.history)]})

    async def diff(request: web.Request) -> web.Response:
        try:
            before, after = int(request.match_info["a"]), int(request.match_info["b"])
        except ValueError:
            raise ChangeError(400, "generations are numbers", "generation") from None
        return web.json_response({"from": before, "to": after, "changes": control.diff(before, after)})

    @web.middleware
    async def change_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ChangeError as exc:
            return error(exc.status, exc.message, field=exc.field)

    app.middlewares.append(change_errors)
    app.router.add_put("/v1/services/{service}/rules/{rule}/weights", weights)
    app.router.add_put("/v1/services/{service}/rules", rules)
    app.router.add_put("/v1/services/{service}/versions/{version}", version)
    app.router.add_post("/v1/rollback", rollback)
    app.router.add_post("/v1/reload", reload)
    app.router.add_post("/v1/reset", reset)
    app.router.add_get("/v1/generations", generations)
    app.router.add_post("/v1/explain", explain_route)
    app.router.add_get("/v1/flags", flags)
    app.router.add_put("/v1/flags/{key}", put_flag)
    app.router.add_delete("/v1/flags/{key}", delete_flag)
    app.router.add_put("/v1/flags/{key}/rollout", flag_rollout)
    app.router.add_post("/v1/flags/{key}/enable", switch(True, "enable"))
    app.router.add_post("/v1/flags/{key}/disable", switch(False, "disable"))
    app.router.add_post("/v1/flags/{key}/kill", switch(False, "kill switch:"))
    app.router.add_get("/v1/generations/{a}/diff/{b}", diff)


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


# ----------------------------------------------------------------------------------------------- views


def describe(state: RoutingState, snapshots: list[dict[str, Any]],
             overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The routing state in the config's own vocabulary, plus what only the running proxy knows: the
    generation each worker serves, how many buckets each version owns, endpoint health (an endpoint
    any worker holds out counts as out), and which services and flags admin changes override (parts
    and since which generation), so that what hides the file is never silent."""
    overrides = overrides or {}
    health: dict[str, str] = {}
    for snapshot in snapshots:
        for address, status in snapshot.get("health", {}).items():
            if status != "up":
                health[address] = status
    services = {}
    for service in state.config.services:
        route = state.services[service.name]
        rules = []
        for rule, compiled in zip(service.rules, route.rules, strict=True):
            entry: dict[str, Any] = {"name": rule.name}
            if not rule.match.is_empty:
                entry["match"] = _match(rule.match)
            if rule.version is not None:
                entry["version"] = rule.version
            elif rule.split is not None and compiled.split is not None:
                entry["split"] = dict(rule.split.weights)
                entry["sticky"] = _sticky(rule.split.sticky)
                entry["buckets"] = dict(Counter(compiled.split.owners))
            rules.append(entry)
        services[service.name] = {
            "hosts": list(service.hosts),
            "path_prefix": service.path_prefix,
            "versions": {v.name: {"endpoints": [str(e) for e in v.endpoints],
                                  "health": {**{target.address: health.get(target.address, "up")
                                                for target in route.versions[v.name].endpoints},
                                             **{target.address: "draining"
                                                for target in route.versions[v.name].draining}}}
                         for v in service.versions},
            "rules": rules,
        }
        if f"services.{service.name}" in overrides:
            services[service.name]["overridden"] = overrides[f"services.{service.name}"]
    flags = describe_flags(state)
    for key, flag in flags.items():
        if f"flags.{key}" in overrides:
            flag["overridden"] = overrides[f"flags.{key}"]
    return {
        "generation": state.generation,
        "flags": flags,
        "overridden": overrides,
        "workers": [{"pid": s.get("pid"), "generation": s["generation"], "connections": s["connections"]}
                    for s in snapshots],
        "services": services,
    }


def describe_flags(state: RoutingState) -> dict[str, Any]:
    """Each flag as configured, with how many of its rollout buckets each variant owns now."""
    described = {}
    for flag in state.config.flags:
        compiled = state.flags.flags[flag.key]
        entry: dict[str, Any] = {"enabled": flag.enabled, "default": flag.default,
                                 "variants": dict(flag.variants), "rules": len(flag.rules)}
        if flag.rollout is not None and compiled.rollout is not None:
            entry["rollout"] = {variant: share / 1000 for variant, share in flag.rollout}
            entry["buckets"] = dict(Counter(compiled.rollout.table.owners))
        described[flag.key] = entry
    return described


def _condition(condition: Condition) -> Any:
    if condition.kind in ("present", "absent"):
        return {condition.kind: True}
    return {condition.kind: condition.value}


def _match(match: Match) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in ("headers", "cookies", "query"):
        pairs = getattr(match, field)
        if pairs:
            out[field] = {name: _condition(condition) for name, condition in pairs}
    if match.path is not None:
        out["path"] = _condition(match.path)
    if match.methods is not None:
        out["method"] = sorted(match.methods)
    return out


def _sticky(sticky: Sticky) -> Any:
    if sticky.kind in ("none", "client_ip"):
        return sticky.kind
    out: dict[str, Any] = {sticky.kind: sticky.name}
    if sticky.assign:
        out.update(assign=True, max_age=sticky.max_age)
    return out
