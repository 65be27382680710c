"""The controller API's OpenAPI 3 document: the routing changes of a proxy's admin API (the same
schemas, from ``turnout.api.openapi``) plus the watch and the fleet list. Served at
``GET /v1/openapi.json``; the test suite fuzzes every operation from it."""

from __future__ import annotations

import copy
from typing import Any

from turnout.api.openapi import DOCUMENT as PROXY_DOCUMENT

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

ROLLOUT_START: dict[str, Any] = {
    "type": "object", "required": ["service", "to"], "additionalProperties": False,
    "properties": {
        "service": {"type": "string", "minLength": 1, "maxLength": 63},
        "to": {"type": "string", "minLength": 1, "maxLength": 63},
        "endpoints": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "spec": {"type": "object", "description": "a rollout spec (the config's rollouts.<service> syntax); "
                                                  "default: the controller config's spec for the service"},
    },
}
COMMANDS = ("pause", "resume", "promote", "promote-full", "abort", "retry", "undo")
_SERVICE = {"name": "service", "in": "path", "required": True, "schema": {"type": "string"}}
_ANSWER = {"200": {"description": "the rollout", "content": _OBJECT}, "404": {"description": "no such rollout",
                                                                             "content": _OBJECT},
           "409": {"description": "not in this phase", "content": _OBJECT}, **_ERRORS}
DOCUMENT["components"]["schemas"]["RolloutStart"] = ROLLOUT_START
DOCUMENT["paths"].update({
    "/v1/rollouts": {
        "get": {"summary": "every service's latest rollout", "responses": {"200": {"description": "ok",
                                                                                   "content": _OBJECT}, **_ERRORS}},
        "post": {"summary": "start a rollout", "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/RolloutStart"}}}}, "responses": {
                "201": {"description": "started", "content": _OBJECT}, **_ANSWER}},
    },
    "/v1/rollouts/{service}": {"get": {"summary": "a rollout's status", "parameters": [_SERVICE],
                                       "responses": _ANSWER}},
    "/v1/rollouts/{service}/history": {"get": {"summary": "a rollout's transitions", "parameters": [_SERVICE],
                                               "responses": _ANSWER}},
    **{f"/v1/rollouts/{{service}}/{name}": {"post": {"summary": f"{name} the rollout", "parameters": [_SERVICE],
                                                     "responses": _ANSWER}} for name in COMMANDS},
})

DEPLOY_START: dict[str, Any] = {
    "type": "object", "required": ["service", "image", "version"], "additionalProperties": False,
    "properties": {
        "service": {"type": "string", "minLength": 1, "maxLength": 63},
        "image": {"type": "string", "minLength": 1, "maxLength": 300},
        "version": {"type": "string", "minLength": 1, "maxLength": 63},
        "replicas": {"type": "integer", "minimum": 1, "maximum": 50},
        "strategy": {"enum": ["canary", "blueGreen", "rolling"]},
        "pull": {"type": "boolean", "description": "pull the image if the engine does not have it (default: never)"},
        "rolling": {"type": "object", "additionalProperties": False, "description": "strategy rolling: its batches",
                    "properties": {
                        "parallelism": {"type": "integer", "minimum": 1, "maximum": 50},
                        "delay": {"type": "number", "minimum": 0, "maximum": 3600},
                        "monitor": {"type": "number", "minimum": 0, "maximum": 3600},
                        "progressDeadline": {"type": "number", "minimum": 1, "maximum": 3600},
                        "failureAction": {"enum": ["rollback", "stop"]},
                    }},
    },
}
DEPLOY_UNDO: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {"toRevision": {"type": "integer", "minimum": 1, "maximum": 1_000_000,
                                  "description": "default: the revision before the latest"}},
}
DOCUMENT["components"]["schemas"]["DeployStart"] = DEPLOY_START
DOCUMENT["components"]["schemas"]["DeployUndo"] = DEPLOY_UNDO
DOCUMENT["paths"].update({
    "/v1/deploys": {"post": {"summary": "deploy an image as a new version (immutable infrastructure)",
                             "requestBody": {"required": True, "content": {"application/json": {
                                 "schema": {"$ref": "#/components/schemas/DeployStart"}}}},
                             "responses": {"201": {"description": "started", "content": _OBJECT}, **_ANSWER}}},
    "/v1/deploys/{service}": {"get": {"summary": "a deploy's status", "parameters": [_SERVICE],
                                      "responses": _ANSWER}},
    "/v1/deploys/{service}/history": {"get": {"summary": "every revision kept, oldest first", "parameters": [_SERVICE],
                                              "responses": _ANSWER}},
    "/v1/deploys/{service}/undo": {"post": {
        "summary": "deploy an earlier revision's image again, through the same gates", "parameters": [_SERVICE],
        "requestBody": {"required": False, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/DeployUndo"}}}},
        "responses": {"201": {"description": "started", "content": _OBJECT}, **_ANSWER}}},
})
