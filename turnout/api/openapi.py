"""The OpenAPI 3 document of the admin API: served at ``GET /v1/openapi.json``, and the source of the
request-body schemas the API validates against (so the document cannot drift from the checks)."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft7Validator

__all__ = ["DOCUMENT", "validator"]

_ERROR = {"type": "object", "required": ["error"],
          "properties": {"error": {"type": "string"}, "field": {"type": "string"}}}
_NAME = {"type": "string", "minLength": 1, "maxLength": 63}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Weights": {
        "type": "object", "required": ["weights"], "additionalProperties": False,
        "properties": {"weights": {"type": "object", "minProperties": 1,
                                   "additionalProperties": {"type": "integer", "minimum": 0}}},
    },
    "Rules": {
        "type": "object", "required": ["rules"], "additionalProperties": False,
        "properties": {"rules": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
    },
    "Version": {
        "type": "object", "required": ["endpoints"], "additionalProperties": False,
        "properties": {"endpoints": {"type": "array", "items": {"type": "string"}},
                       "draining": {"type": "array", "items": {"type": "string"}},
                       "tls": {"type": "object"}, "health": {"type": "object"}},
    },
    "Reset": {
        "type": "object",
        "additionalProperties": False,
        "description": "what to reset: services and flags by name, or everything with all",
        "properties": {
            "services": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "flags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "all": {"type": "boolean"},
        },
    },
    "Rollback": {
        "type": "object", "required": ["generation"], "additionalProperties": False,
        "properties": {"generation": {"type": "integer", "minimum": 1}},
    },
    "Explain": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "host": {"type": "string"}, "path": {"type": "string"}, "method": {"type": "string"},
            "query": {"type": "string"}, "client_ip": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "cookies": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Flag": {
        "type": "object", "required": ["variants", "default"],
        "properties": {"variants": {"type": "object", "minProperties": 1}, "default": {"type": "string"},
                       "enabled": {"type": "boolean"}, "rules": {"type": "array", "items": {"type": "object"}},
                       "rollout": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
                       "salt": {"type": "string"}},
        "additionalProperties": False,
    },
    "Rollout": {
        "type": "object", "required": ["rollout"], "additionalProperties": False,
        "properties": {"rollout": {"type": "object", "minProperties": 1,
                                   "additionalProperties": {"type": "number", "minimum": 0}}},
    },
    "Change": {
        "type": "object", "required": ["generation", "at", "who", "what"],
        "properties": {"generation": {"type": "integer"}, "at": {"type": "string"}, "who": {"type": "string"},
                       "what": {"type": "string"}, "converged": {"type": "boolean"},
                       "workers": {"type": "array", "items": {"type": "object"}}},
    },
    "Error": _ERROR,
}


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {400: "not JSON, or a bad header", 401: "missing or wrong token", 403: "refused (Origin header)",
               404: "no such service, rule or generation", 409: "stale If-Match, or the rule is not a split",
               422: "the change would make an invalid config"}
    return {str(code): {"description": reasons[code], **_json("Error")} for code in codes}


def _change(schema: str, summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [*params,
                       {"name": "dry_run", "in": "query", "schema": {"type": "boolean"},
                        "description": "validate and report which sticky users would move, change nothing"},
                       {"name": "If-Match", "in": "header", "schema": {"type": "string"},
                        "description": "the generation the change is based on"},
                       {"name": "X-Turnout-Actor", "in": "header", "schema": {"type": "string"}}],
        "requestBody": {"required": True, **_json(schema)},
        "responses": {"200": {"description": "applied (or, for a dry run, previewed)",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      **_errors(400, 401, 403, 404, 409, 422)},
    }


def _path_param(name: str, kind: str = "string") -> dict[str, Any]:
    schema = dict(_NAME) if kind == "string" else {"type": "integer"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _read(summary: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    body = content or {"application/json": {"schema": {"type": "object"}}}
    return {"summary": summary, "responses": {"200": {"description": "ok", "content": body}, **_errors(401, 403)}}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Turnout admin API", "version": "1",
             "description": "Read and change a Turnout proxy's routing. Every route needs the bearer token."},
    "components": {"schemas": SCHEMAS,
                   "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/v1/state": {"get": _read("the routing state; ETag is the generation")},
        "/v1/services/{service}/rules/{rule}/weights": {"put": _change(
            "Weights", "set a split rule's weights", [_path_param("service"), _path_param("rule")])},
        "/v1/services/{service}/rules": {"put": _change(
            "Rules", "replace a service's rules", [_path_param("service")])},
        "/v1/services/{service}/versions/{version}": {"put": _change(
            "Version", "add a version or replace its endpoints", [_path_param("service"), _path_param("version")])},
        "/v1/rollback": {"post": {
            "summary": "a new generation equal to an earlier one",
            "parameters": [{"name": "If-Match", "in": "header", "schema": {"type": "string"}}],
            "requestBody": {"required": True, **_json("Rollback")},
            "responses": {"200": {"description": "rolled back", **_json("Change")}, **_errors(400, 401, 403, 404, 409)},
        }},
        "/v1/reset": {"post": {
            "summary": "drop admin changes so the config file shows through again, as a new generation",
            "parameters": [{"name": "If-Match", "in": "header", "schema": {"type": "string"}}],
            "requestBody": {"required": True, **_json("Reset")},
            "responses": {"200": {"description": "reset", **_json("Change")}, **_errors(400, 401, 403, 409, 422)},
        }},
        "/v1/reload": {"post": {
            "summary": "re-read the config file and its certificates, with the admin changes on top",
            "responses": {"200": {"description": "reloaded", **_json("Change")}, **_errors(401, 403, 422)},
        }},
        "/v1/flags": {"get": _read("the feature flags and their current rollouts")},
        "/v1/flags/{key}": {
            "put": _change("Flag", "create or replace a flag (the config file's flag syntax)", [_path_param("key")]),
            "delete": {"summary": "delete a flag", "parameters": [_path_param("key")],
                       "responses": {"200": {"description": "deleted", **_json("Change")},
                                     **_errors(400, 401, 403, 404, 409, 422)}},
        },
        "/v1/flags/{key}/rollout": {"put": _change(
            "Rollout", "change a flag's percentage rollout", [_path_param("key")])},
        **{f"/v1/flags/{{key}}/{action}": {"post": {
            "summary": f"{action} a flag", "parameters": [_path_param("key")],
            "responses": {"200": {"description": "done", **_json("Change")}, **_errors(400, 401, 403, 404, 409, 422)},
        }} for action in ("enable", "disable", "kill")},
        "/v1/generations": {"get": _read("the last generations, newest first")},
        "/v1/generations/{a}/diff/{b}": {"get": {
            "summary": "what changed between two generations",
            "parameters": [_path_param("a", "integer"), _path_param("b", "integer")],
            "responses": {"200": {"description": "the changes",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_errors(400, 401, 403, 404)},
        }},
        "/v1/explain": {"post": {
            "summary": "how a request would be routed now",
            "requestBody": {"required": True, **_json("Explain")},
            "responses": {"200": {"description": "the decision",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_errors(400, 401, 403, 422)},
        }},
        "/v1/openapi.json": {"get": _read("this document")},
        "/metrics": {"get": _read("Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}})},
        "/ready": {"get": {"summary": "readiness", "responses": {
            "200": {"description": "serving"}, "503": {"description": "draining"}, **_errors(401, 403)}}},
        "/live": {"get": _read("liveness")},
    },
}


def validator(schema: str) -> Draft7Validator:
    return Draft7Validator(SCHEMAS[schema])
