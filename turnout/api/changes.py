"""Routing changes as an admin API receives them, for every admin API (the proxy's now, the
controller's next): strict JSON bodies checked against the published schemas, and each change route
turned into a ``Change`` (what it says, and the pure overlay operation that makes it).

An HTTP layer only routes requests here and answers: ``ChangeError`` carries the status (400 for what
is not JSON, 422 for a body that does not fit its schema, naming the field) and leaves state alone.

Pure: text and plain data in, changes out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft7Validator

from turnout.core import explain, overlay
from turnout.core.desired import Entry
from turnout.core.errors import ChangeError
from turnout.core.match import Request
from turnout.core.overlay import Overlay
from turnout.core.writer import Writer

from .openapi import validator

__all__ = ["CHANGES", "ROUTES", "Answer", "Call", "Change", "Route", "call", "explain_request", "if_match",
           "parse_body", "reset_request", "strict_json"]

Params = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Change:
    what: str  # as recorded in the history: "weights of shop/default: v1=90, v2=10"
    make: Callable[[Any, Overlay], Overlay]  # (effective document, overlay) -> the new overlay


def strict_json(text: str | bytes) -> Any:
    """``text`` as JSON, or ValueError for anything that is not strict JSON (RFC 8259): Python's parser
    also takes NaN and Infinity, recurses as deep as the nesting goes, accepts duplicate keys, and
    lets ``"\\ud800"`` (a lone surrogate) through, which nothing can encode later."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError
        data = json.loads(text, parse_constant=_not_json, object_pairs_hook=_unique)
        json.dumps(data, ensure_ascii=False).encode()  # UnicodeEncodeError is a ValueError
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return data


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"duplicate key {key!r}")
        found[key] = value
    return found


_VALIDATORS = {name: validator(name) for name in
               ("Weights", "Rules", "Version", "Rollback", "Reset", "Explain", "Flag", "Rollout")}


def parse_body(text: str | bytes, schema: str | Draft7Validator) -> dict[str, Any]:
    """A JSON object checked against the schema the OpenAPI document publishes for it (by name, or the
    validator of another document's schema)."""
    try:
        data = strict_json(text)
    except ValueError as exc:
        raise ChangeError(400, f"the body must be JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise ChangeError(400, "the body must be a JSON object", "body")
    checker = _VALIDATORS[schema] if isinstance(schema, str) else schema
    problem = next(iter(sorted(checker.iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if problem is not None:
        where = ".".join(str(part) for part in problem.absolute_path)
        if problem.validator == "required":
            where = ".".join([where, *(k for k in problem.validator_value if k not in problem.instance)]).strip(".")
        raise ChangeError(422, problem.message, where or "body")
    return data


def if_match(value: str | None) -> int | None:
    """An ``If-Match`` header: the generation a change was based on."""
    if value is None:
        return None
    cleaned = value.strip().removeprefix("W/").strip('"')
    if not cleaned.isdigit() or len(cleaned) > 18:
        raise ChangeError(400, f"If-Match must be a generation number, got {value[:40]!r}", "If-Match")
    return int(cleaned)


# -- the change routes: (params, body) -> Change


def _weights(params: Params, data: dict[str, Any]) -> Change:
    service, rule, given = params["service"], params["rule"], data["weights"]
    return Change(f"weights of {service}/{rule}: " + ", ".join(f"{k}={v}" for k, v in given.items()),
                  lambda doc, old: overlay.set_weights(doc, old, service, rule, given))


def _rules(params: Params, data: dict[str, Any]) -> Change:
    service, given = params["service"], data["rules"]
    return Change(f"rules of {service}", lambda doc, old: overlay.replace_rules(doc, old, service, given))


def _version(params: Params, data: dict[str, Any]) -> Change:
    service, name = params["service"], params["version"]
    return Change(f"endpoints of {service}/{name}", lambda doc, old: overlay.set_version(doc, old, service, name, data))


def _put_flag(params: Params, data: dict[str, Any]) -> Change:
    key = params["key"]
    return Change(f"flag {key}", lambda doc, old: overlay.set_flag(doc, old, key, data))


def _flag_rollout(params: Params, data: dict[str, Any]) -> Change:
    key, rollout = params["key"], data["rollout"]
    return Change(f"rollout of flag {key}: " + ", ".join(f"{k}={v}%" for k, v in rollout.items()),
                  lambda doc, old: overlay.set_flag_rollout(doc, old, key, rollout))


def _delete_flag(params: Params, data: dict[str, Any]) -> Change:
    key = params["key"]
    return Change(f"delete flag {key}", lambda doc, old: overlay.delete_flag(doc, old, key))


def _switch(enabled: bool, label: str) -> Callable[[Params, dict[str, Any]], Change]:
    def change(params: Params, data: dict[str, Any]) -> Change:
        key = params["key"]
        return Change(f"{label} flag {key}", lambda doc, old: overlay.set_flag_enabled(doc, old, key, enabled))
    return change


# (method, path, body schema or None, builder). Every one is a new generation, and takes ?dry_run=true.
CHANGES: tuple[tuple[str, str, str | None, Callable[[Params, dict[str, Any]], Change]], ...] = (
    ("PUT", "/v1/services/{service}/rules/{rule}/weights", "Weights", _weights),
    ("PUT", "/v1/services/{service}/rules", "Rules", _rules),
    ("PUT", "/v1/services/{service}/versions/{version}", "Version", _version),
    ("PUT", "/v1/flags/{key}", "Flag", _put_flag),
    ("PUT", "/v1/flags/{key}/rollout", "Rollout", _flag_rollout),
    ("DELETE", "/v1/flags/{key}", None, _delete_flag),
    ("POST", "/v1/flags/{key}/enable", None, _switch(True, "enable")),
    ("POST", "/v1/flags/{key}/disable", None, _switch(False, "disable")),
    ("POST", "/v1/flags/{key}/kill", None, _switch(False, "kill switch:")),
)


def reset_request(data: dict[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    """A reset body -> (services, flags) to reset; None: all of that kind."""
    if data.get("all"):
        if data.get("services") or data.get("flags"):
            raise ChangeError(422, "'all' resets everything: give it alone", "all")
        return None, None
    if not data.get("services") and not data.get("flags"):
        raise ChangeError(422, "name services or flags to reset, or give all: true", "services")
    return list(data.get("services", [])), list(data.get("flags", []))


def explain_request(data: dict[str, Any]) -> tuple[str, Request]:
    """An explain body -> (host, the request routing would see)."""
    headers = {k.lower(): v for k, v in data.get("headers", {}).items()}
    cookies = data.get("cookies", {})
    if cookies:
        headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    host = str(data.get("host") or headers.get("host", ""))
    headers["host"] = host
    path = str(data.get("path", "/"))
    if not path.startswith("/"):
        raise ChangeError(422, "'path' must start with '/'", "path")
    return host, Request(str(data.get("method", "GET")).upper(), path, str(data.get("query", "")), headers,
                         str(data.get("client_ip", "127.0.0.1")))


# -- every writing route of an admin API, whatever the HTTP layer


@dataclass(frozen=True, slots=True)
class Call:
    """One admin request as the routes see it (the HTTP layer fills it in)."""

    params: Params  # path parameters
    body: dict[str, Any]  # checked against the route's schema
    actor: str  # who, for the history
    if_match: int | None
    dry_run: bool


Answer = Entry | dict[str, Any]  # a new generation (answered once receivers serve it), or a plain answer


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    schema: str | None
    run: Callable[[Writer, Call], Answer]


def call(route: Route, params: Params, body: bytes, headers: Mapping[str, str], query: Mapping[str, str],
         default_actor: str) -> Call:
    """An HTTP request as the routes take it (a body that does not fit is a ``ChangeError``)."""
    return Call(params, parse_body(body, route.schema) if route.schema else {},
                headers.get("X-Turnout-Actor", default_actor)[:100], if_match(headers.get("If-Match")),
                query.get("dry_run", "").lower() in ("1", "true", "yes"))


def _changing(build: Callable[[Params, dict[str, Any]], Change]) -> Callable[[Writer, Call], Answer]:
    def run(writer: Writer, call: Call) -> Answer:
        change = build(call.params, call.body)
        if call.dry_run:  # which sticky users it would move; nothing changes
            current = writer.preview(lambda doc, old: old)
            after = writer.preview(change.make)
            return {"dry_run": True, "generation": writer.generation, "what": change.what,
                    "splits": explain.moves(current, after)}
        return writer.change(call.actor, change.what, change.make, call.if_match)
    return run


def _rollback(writer: Writer, call: Call) -> Answer:
    return writer.rollback(call.actor, call.body["generation"], call.if_match)


def _reset(writer: Writer, call: Call) -> Answer:
    services, flags = reset_request(call.body)
    return writer.reset(call.actor, services, flags, call.if_match)


def _reload(writer: Writer, call: Call) -> Answer:
    return writer.reload(call.actor)


def _generations(writer: Writer, call: Call) -> Answer:
    return {"current": writer.generation, "generations": [entry.summary() for entry in reversed(writer.history)]}


def _diff(writer: Writer, call: Call) -> Answer:
    try:
        before, after = int(call.params["a"]), int(call.params["b"])
    except ValueError:
        raise ChangeError(400, "generations are numbers", "generation") from None
    return {"from": before, "to": after, "changes": writer.diff(before, after)}


# What a writer's admin API serves (the proxy's, standalone; the controller's). A managed proxy answers
# the same routes with 409.
ROUTES: tuple[Route, ...] = (
    *(Route(method, path, schema, _changing(build)) for method, path, schema, build in CHANGES),
    Route("POST", "/v1/rollback", "Rollback", _rollback),
    Route("POST", "/v1/reset", "Reset", _reset),
    Route("POST", "/v1/reload", None, _reload),
    Route("GET", "/v1/generations", None, _generations),
    Route("GET", "/v1/generations/{a}/diff/{b}", None, _diff),
)
