"""OFREP: the real OpenFeature SDK with the OFREP provider evaluates Turnout's flags over HTTP."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import ProxyProcess

FLAGS = {
    "checkout": {"variants": {"on": True, "off": False}, "default": "off",
                 "rules": [{"match": {"context": {"plan": {"in": ["pro"]}}}, "variant": "on"}],
                 "rollout": {"on": 30, "off": 70}},
    "banner": {"variants": {"blue": "#00f", "red": "#f00"}, "default": "red"},
    "limit": {"variants": {"small": 10, "large": 1000}, "default": "small", "enabled": False},
    "layout": {"variants": {"a": {"cols": 2}, "b": {"cols": 3}}, "default": "a",
               "rules": [{"match": {"context": {"country": "NL"}}, "variant": "b"}]},
}


@pytest.fixture(scope="module")
def turnout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, ProxyProcess]]:
    directory: Path = tmp_path_factory.mktemp("ofrep")
    path = directory / "turnout.yaml"
    path.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0", "flags_token_env": "APP_FLAGS_TOKEN"},
        "services": {"s": {"versions": {"v1": ["127.0.0.1:9"]}, "version": "v1"}}, "flags": FLAGS,
    }))
    os.environ["APP_FLAGS_TOKEN"] = "app-read-only"
    try:
        process = ProxyProcess(path)
    finally:
        del os.environ["APP_FLAGS_TOKEN"]  # the proxy read it at start; the tests must not leak it
    try:
        yield process.admin_url(), "app-read-only", process
    finally:
        process.stop()


def client(base: str, token: str) -> Any:
    api.set_provider(OFREPProvider(base, headers_factory=lambda: {"Authorization": f"Bearer {token}"}))
    return api.get_client()


def test_the_openfeature_sdk_evaluates_every_type_with_the_right_reason(turnout) -> None:
    base, token, _ = turnout
    flags = client(base, token)
    pro = flags.get_boolean_details("checkout", False, EvaluationContext("u1", {"plan": "pro"}))
    assert (pro.value, pro.reason, pro.variant) == (True, Reason.TARGETING_MATCH, "on")
    split = flags.get_boolean_details("checkout", False, EvaluationContext("u1", {"plan": "free"}))
    assert split.reason == Reason.SPLIT and split.variant in ("on", "off")
    banner = flags.get_string_details("banner", "none", EvaluationContext("u1"))
    assert (banner.value, banner.reason) == ("#f00", Reason.STATIC)
    limit = flags.get_integer_details("limit", 0, EvaluationContext("u1"))
    assert (limit.value, limit.reason) == (10, Reason.DISABLED)
    layout = flags.get_object_details("layout", {}, EvaluationContext("u1", {"country": "NL"}))
    assert (layout.value, layout.reason) == ({"cols": 3}, Reason.TARGETING_MATCH)
    missing = flags.get_boolean_details("nope", False, EvaluationContext("u1"))
    assert (missing.value, missing.reason, missing.error_code) == (False, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)
    no_key = flags.get_boolean_details("checkout", False, EvaluationContext(None, {"plan": "free"}))
    assert (no_key.reason, no_key.error_code) == (Reason.ERROR, ErrorCode.TARGETING_KEY_MISSING)


def test_rollout_share_and_stickiness_over_ofrep(turnout) -> None:
    base, token, _ = turnout
    flags = client(base, token)
    first = [flags.get_boolean_value("checkout", False, EvaluationContext(f"user-{i}")) for i in range(600)]
    assert 120 < sum(first) < 240  # 30 % of 600, within a wide statistical bound
    again = [flags.get_boolean_value("checkout", False, EvaluationContext(f"user-{i}")) for i in range(600)]
    assert first == again


def post(url: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json",
                                                                            **headers})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, dict(exc.headers), json.loads(raw) if raw else None


def test_bulk_evaluation_etag_and_errors(turnout) -> None:
    base, token, _ = turnout
    auth = {"Authorization": f"Bearer {token}"}
    status, headers, body = post(base + "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "u7"}}, auth)
    assert status == 200 and [f["key"] for f in body["flags"]] == ["banner", "checkout", "layout", "limit"]
    etag = headers["ETag"]
    status, _, _ = post(base + "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "u7"}},
                        {**auth, "If-None-Match": etag})
    assert status == 304
    status, _, body = post(base + "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "u8"}},
                           {**auth, "If-None-Match": etag})
    assert status == 200  # another context: another answer
    assert post(base + "/ofrep/v1/evaluate/flags", b"{nope", auth)[2]["errorCode"] == "PARSE_ERROR"
    for bad in (b'{"context": {"targetingKey": "\\ud800"}}',  # a lone surrogate: parses, cannot be encoded
                b'{"context": {"targetingKey": "u", "n": NaN}}', b"[" * 100_000 + b"]" * 100_000):
        assert post(base + "/ofrep/v1/evaluate/flags/checkout", bad, auth)[:3:2] == \
            (400, {"key": "checkout", "errorCode": "PARSE_ERROR", "errorDetails": "the body must be JSON"})
    status, _, body = post(base + "/ofrep/v1/evaluate/flags/checkout", {"context": []}, auth)
    assert (status, body["errorCode"]) == (400, "INVALID_CONTEXT")
    # The read-only token reaches OFREP only; X-API-Key works too; no token, no answer.
    assert post(base + "/ofrep/v1/evaluate/flags/banner", {}, {"X-API-Key": token})[0] == 200
    assert post(base + "/ofrep/v1/evaluate/flags/banner", {}, {})[0] == 401
    assert post(base + "/v1/explain", {}, auth)[0] == 401


def test_flag_rollout_tables_are_kept_in_the_state_file(turnout) -> None:
    process = turnout[2]
    state_file = Path(str(process.config_path) + ".state.json")
    for _ in range(50):
        if state_file.exists():
            break
        time.sleep(0.05)
    saved = json.loads(state_file.read_text())
    assert any(service == "flag:checkout" and part == "rollout" for service, part, *_ in saved["tables"])


async def test_injected_flags_agree_with_ofrep_for_every_key(upstreams, spawn_proxy, tmp_path: Path) -> None:
    up = await upstreams("v1")
    process = spawn_proxy(yaml.safe_dump({
        "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
        "services": {"s": {"versions": {"v1": [up.address]}, "split": {"v1": 1}, "sticky": {"header": "x-user"},
                           "inject_flags": {"header": "X-Flags", "flags": ["checkout", "banner"]}}},
        "flags": FLAGS,
    }))
    base = process.admin_url()
    auth = {"Authorization": "Bearer " + (tmp_path / "admin.token").read_text().strip()}
    evaluated: Counter[tuple[str, str]] = Counter()
    async with aiohttp.ClientSession() as session:
        # The second pass over 200 users asks again: answered from the per-bucket memo, it must agree.
        for user in [f"user-{i}" for i in range(1000)] + [f"user-{i}" for i in range(200)]:
            headers = {"X-User": user, "X-Flags": "checkout=on"}  # a client trying to give itself the flag
            async with session.get(f"http://127.0.0.1:{process.port}/", headers=headers) as response:
                seen = dict((k.lower(), v) for k, v in (await response.json())["headers"])
            async with session.post(base + "/ofrep/v1/evaluate/flags/checkout",
                                    json={"context": {"targetingKey": user}}, headers=auth) as response:
                remote = await response.json()
            assert seen["x-flags"] == f"checkout={remote['variant']}, banner=red", user
            evaluated.update({("checkout", remote["variant"]): 2, ("banner", "red"): 1})  # injected + OFREP
        async with session.get(base + "/metrics", headers=auth) as response:
            text = await response.text()
    injected = [entry for entry in up.seen
                if "checkout=on" in {k.lower(): v for k, v in entry["headers"]}.get("x-flags", "")]
    assert 240 < len(injected) < 480  # ~30 % rollout: the client's own header never got through
    counted = {(s.labels["flag"], s.labels["variant"]): s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "turnout_flag_evaluations_total"}
    assert counted == evaluated


async def test_flags_by_admin_api_growth_kill_switch_and_bad_definitions(upstreams, spawn_proxy, tmp_path) -> None:
    up = await upstreams("v1")
    process = spawn_proxy(yaml.safe_dump({
        "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
        "services": {"s": {"versions": {"v1": [up.address]}, "split": {"v1": 1}, "sticky": {"header": "x-user"},
                           "inject_flags": {"flags": ["banner"]}}},
        "flags": {"banner": FLAGS["banner"]},
    }))
    base = process.admin_url()
    auth = {"Authorization": "Bearer " + (tmp_path / "admin.token").read_text().strip()}
    checkout = {"variants": {"on": True, "off": False}, "default": "off", "rollout": {"on": 10, "off": 90}}
    users = [f"user-{i}" for i in range(1000)]

    async def having(session: aiohttp.ClientSession, flag: str) -> set[str]:
        async with session.post(base + "/ofrep/v1/evaluate/flags", json={"context": {}}, headers=auth) as r:
            assert r.status == 200
        found = set()
        for user in users:
            async with session.post(base + f"/ofrep/v1/evaluate/flags/{flag}",
                                    json={"context": {"targetingKey": user}}, headers=auth) as response:
                if (await response.json()).get("value") is True:
                    found.add(user)
        return found

    async with aiohttp.ClientSession() as session:
        async with session.put(base + "/v1/flags/checkout", json=checkout, headers=auth) as response:
            assert response.status == 200, await response.text()
        at_10 = await having(session, "checkout")
        assert 40 < len(at_10) < 170
        async with session.put(base + "/v1/flags/checkout", json={**checkout, "rollout": {"on": 20, "off": 80}},
                               headers=auth) as response:
            assert response.status == 200
        at_20 = await having(session, "checkout")
        assert at_10 <= at_20 and len(at_20) > len(at_10)  # everyone who had it keeps it
        async with session.get(base + "/v1/flags", headers=auth) as response:
            listed = (await response.json())["flags"]["checkout"]
        assert listed["rollout"] == {"on": 20.0, "off": 80.0} and sum(listed["buckets"].values()) == 10_000

        # The kill switch: the very next evaluation, over OFREP and in injected headers, is off.
        async with session.post(base + "/v1/flags/banner/kill", headers=auth) as response:
            assert response.status == 200
        async with session.post(base + "/ofrep/v1/evaluate/flags/banner", json={}, headers=auth) as response:
            assert (await response.json())["reason"] == "DISABLED"
        async with session.get(f"http://127.0.0.1:{process.port}/", headers={"X-User": "u1"}) as response:
            seen = {k.lower(): v for k, v in (await response.json())["headers"]}
        assert seen["x-turnout-flags"] == "banner=red"

        bad = [
            ({**checkout, "rollout": {"on": 20, "maybe": 80}}, "flags.checkout.rollout.maybe"),
            ({**checkout, "rollout": {"on": 20, "off": 70}}, "flags.checkout.rollout"),
            ({**checkout, "rules": [{"match": {"context": {"plan": {"regex": "("}}}, "variant": "on"}]},
             "flags.checkout.rules[0].match.context.plan.regex"),
        ]
        for flag, field in bad:
            async with session.put(base + "/v1/flags/checkout", json=flag, headers=auth) as response:
                answer = await response.json()
                assert (response.status, answer["field"]) == (422, field), answer
        assert await having(session, "checkout") == at_20  # nothing changed
        async with session.delete(base + "/v1/flags/checkout", headers=auth) as response:
            assert response.status == 200
        async with session.post(base + "/ofrep/v1/evaluate/flags/checkout", json={}, headers=auth) as response:
            assert response.status == 404 and (await response.json())["errorCode"] == "FLAG_NOT_FOUND"
