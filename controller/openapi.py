"""The controller API's OpenAPI 3 document: the routing changes of a proxy's admin API (the same
schemas, from ``proxy.core.openapi``) plus the watch and the fleet list. Served at
``GET /v1/openapi.json``; the test suite fuzzes every operation from it."""

from __future__ import annotations

import copy
from typing import Any

from proxy.core.openapi import DOCUMENT as PROXY_DOCUMENT

__all__ = ["DOCUMENT"]

_OBJECT = {"application/json": {"schema": {"type": "object"}}}
_ERRORS = {str(code): {"description": "error", "content": _OBJECT} for code in (400, 401, 403, 422)}
_WATCH_QUERY = [
    {"name": "proxy", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
    {"name": "generation", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 1}},
]

DOCUMENT: dict[str, Any] = copy.deepcopy(PROXY_DOCUMENT)
DOCUMENT["info"] = {"title": "Turnout controller API", "version": "1",
                    "description": "The routing state of a fleet of proxies. Every route needs the bearer token."}
DOCUMENT["paths"].update({
    "/v1/proxies": {"get": {"summary": "the proxies following this controller",
                            "responses": {"200": {"description": "ok", "content": _OBJECT}, **_ERRORS}}},
    "/v1/watch": {
        "get": {"summary": "a long poll: the current snapshot once it is newer than `generation`",
                "parameters": _WATCH_QUERY,
                "responses": {"200": {"description": "a snapshot", "content": _OBJECT},
                              "204": {"description": "nothing newer within `wait`"}, **_ERRORS}},
        "post": {"summary": "a proxy's long poll, with its report (a poll message)",
                 "parameters": [_WATCH_QUERY[2]],
                 "requestBody": {"required": True, "content": _OBJECT},
                 "responses": {"200": {"description": "a snapshot", "content": _OBJECT},
                               "204": {"description": "nothing newer within `wait`"}, **_ERRORS}},
    },
})
