"""Admin API requests as changes (``core.changes``): strict JSON, schema errors naming the field, and
each change route's record and overlay operation."""

from __future__ import annotations

from typing import Any

import pytest

from turnout.api import changes
from turnout.core.errors import ChangeError
from turnout.core.overlay import FLAGS


@pytest.mark.parametrize("text", [
    b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1, "a": 2}', b'"\\ud800"', b"\x80", b"[" * 100_000, b"{",
])
def test_strict_json_refuses_what_rfc_8259_does_not_allow(text: bytes) -> None:
    with pytest.raises(ValueError):
        changes.strict_json(text)


@pytest.mark.parametrize(("text", "schema", "status", "field"), [
    (b"[]", "Weights", 400, "body"),
    (b'{"weights": {"v1": -1}}', "Weights", 422, "weights.v1"),
    (b"{}", "Weights", 422, "weights"),
    (b'{"generation": 0}', "Rollback", 422, "generation"),
    (b'{"services": ["a"], "extra": 1}', "Reset", 422, "body"),
])
def test_parse_body_names_the_field(text: bytes, schema: str, status: int, field: str) -> None:
    with pytest.raises(ChangeError) as refused:
        changes.parse_body(text, schema)
    assert (refused.value.status, refused.value.field) == (status, field)


@pytest.mark.parametrize(("value", "expected"), [(None, None), ('"7"', 7), ('W/"12"', 12), ("3", 3)])
def test_if_match(value: str | None, expected: int | None) -> None:
    assert changes.if_match(value) == expected


@pytest.mark.parametrize("value", ["x", '"-1"', "9" * 5000])
def test_if_match_refuses_what_is_not_a_generation(value: str) -> None:
    with pytest.raises(ChangeError) as refused:
        changes.if_match(value)
    assert refused.value.status == 400 and len(refused.value.message) < 200


DOCUMENT: dict[str, Any] = {"services": {"shop": {"versions": {"v1": ["a:1"], "v2": ["b:1"]},
                                                  "split": {"v1": 1, "v2": 1}}},
                            "flags": {"beta": {"variants": {"on": True, "off": False}, "default": "off"}}}


@pytest.mark.parametrize(("method", "path", "params", "body", "what", "overlay"), [
    ("PUT", "/v1/services/{service}/rules/{rule}/weights", {"service": "shop", "rule": "default"},
     {"weights": {"v1": 9, "v2": 1}}, "weights of shop/default: v1=9, v2=1",
     {"shop": {"rules": [{"name": "default", "split": {"v1": 9, "v2": 1}}]}}),
    ("PUT", "/v1/services/{service}/versions/{version}", {"service": "shop", "version": "v3"},
     {"endpoints": ["c:1"]}, "endpoints of shop/v3", {"shop": {"versions": {"v3": {"endpoints": ["c:1"]}}}}),
    ("POST", "/v1/flags/{key}/kill", {"key": "beta"}, {}, "kill switch: flag beta",
     {FLAGS: {"beta": {**DOCUMENT["flags"]["beta"], "enabled": False}}}),
    ("DELETE", "/v1/flags/{key}", {"key": "beta"}, {}, "delete flag beta", {FLAGS: {"beta": None}}),
])
def test_change_routes(method: str, path: str, params: dict[str, str], body: dict[str, Any], what: str,
                       overlay: dict[str, Any]) -> None:
    build = next(b for m, p, _, b in changes.CHANGES if (m, p) == (method, path))
    change = build(params, body)
    assert change.what == what and change.make(DOCUMENT, {}) == overlay


def test_reset_and_explain_requests() -> None:
    assert changes.reset_request({"all": True}) == (None, None)
    assert changes.reset_request({"services": ["shop"]}) == (["shop"], [])
    for bad in ({}, {"all": True, "services": ["shop"]}):
        with pytest.raises(ChangeError):
            changes.reset_request(bad)
    host, request = changes.explain_request({"host": "h", "path": "/p", "cookies": {"a": "1"},
                                             "headers": {"X-User": "u"}})
    assert host == "h" and request.headers == {"x-user": "u", "cookie": "a=1", "host": "h"}
    with pytest.raises(ChangeError):
        changes.explain_request({"path": "p"})
