"""Changing the proxy through the admin API: weights, rules, versions, history, diff, rollback, stale
writes, and admin changes surviving a restart; against a real Turnout process."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from ..helpers import service


def config_text(v1: str, v2: str, weights: dict[str, int] | None = None) -> str:
    return yaml.safe_dump({
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "services": {"shop": service({"v1": [v1], "v2": [v2]}, rules=[
            {"name": "beta", "match": {"headers": {"x-beta": "1"}}, "version": "v2"},
            {"name": "default", "split": weights or {"v1": 100, "v2": 0}, "sticky": {"header": "x-user"}},
        ])},
    })


class Admin:
    def __init__(self, process: Any, tmp_path: Path) -> None:
        self.base = process.admin_url()
        self.headers = {"Authorization": "Bearer " + (tmp_path / "admin.token").read_text().strip(),
                        "X-Turnout-Actor": "test"}

    async def call(self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None,
                   **headers: str) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else None
        async with session.request(method, self.base + path, json=None if data is not None else body, data=data,
                                   headers={**self.headers, **headers}) as response:
            return response.status, await response.json()


async def wait_admin(process: Any) -> None:
    await asyncio.to_thread(process.admin_url)


async def versions(session: aiohttp.ClientSession, port: int, users: range) -> dict[str, str]:
    seen = {}
    for i in users:
        async with session.get(f"http://127.0.0.1:{port}/", headers={"X-User": f"u{i}"}) as response:
            seen[f"u{i}"] = response.headers["X-Version"]
    return seen


async def test_weights_history_diff_rollback_and_stale_writes(upstreams, spawn_proxy, tmp_path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    process = spawn_proxy(config_text(v1.address, v2.address))
    await wait_admin(process)
    admin = Admin(process, tmp_path)
    weights = "/v1/services/shop/rules/default/weights"
    async with aiohttp.ClientSession() as session:
        assert set((await versions(session, process.port, range(100))).values()) == {"v1"}
        status, body = await admin.call(session, "PUT", weights, {"weights": {"v1": 80, "v2": 20}})
        assert status == 200 and body["generation"] == 2 and body["who"] == "test"
        at_20 = await versions(session, process.port, range(400))
        assert 40 < Counter(at_20.values())["v2"] < 130  # ~80 of 400
        status, body = await admin.call(session, "PUT", weights, {"weights": {"v1": 50, "v2": 50}})
        assert body["generation"] == 3
        at_50 = await versions(session, process.port, range(400))
        assert all(at_50[user] == "v2" for user, version in at_20.items() if version == "v2")  # nobody left v2

        # A stale write (someone changed it since generation 2 was read) is refused.
        status, body = await admin.call(session, "PUT", weights, {"weights": {"v1": 1, "v2": 0}}, **{"If-Match": '"2"'})
        assert status == 409 and "current generation is 3" in body["error"]

        status, body = await admin.call(session, "GET", "/v1/generations")
        assert [g["generation"] for g in body["generations"]] == [3, 2, 1]
        assert body["generations"][0]["what"] == "weights of shop/default: v1=50, v2=50"
        status, body = await admin.call(session, "GET", "/v1/generations/2/diff/3")
        assert body["changes"] == [
            {"path": "services.shop.rules[1].split.v1", "before": 80, "after": 50},
            {"path": "services.shop.rules[1].split.v2", "before": 20, "after": 50},
        ]
        status, body = await admin.call(session, "POST", "/v1/rollback", {"generation": 2}, **{"If-Match": "3"})
        assert status == 200 and body["generation"] == 4 and body["what"] == "rollback to generation 2"
        assert await versions(session, process.port, range(400)) == at_20  # the same users, the same versions
        status, state = await admin.call(session, "GET", "/v1/state")
        assert state["generation"] == 4
        assert state["services"]["shop"]["rules"][1]["buckets"] == {"v1": 8000, "v2": 2000}


async def test_bad_changes_are_4xx_naming_the_field_and_change_nothing(upstreams, spawn_proxy, tmp_path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    process = spawn_proxy(config_text(v1.address, v2.address, {"v1": 90, "v2": 10}))
    await wait_admin(process)
    admin = Admin(process, tmp_path)
    weights = "/v1/services/shop/rules/default/weights"
    cases: list[tuple[str, str, Any, int, str]] = [
        ("PUT", weights, {"weights": {"v1": 50, "v9": 50}}, 422, "services.shop.rules[1].split.v9"),
        ("PUT", weights, {"weights": {"v1": -1, "v2": 1}}, 422, "weights.v1"),
        ("PUT", weights, {"weights": {"v1": "half"}}, 422, "weights.v1"),
        ("PUT", weights, {"weights": {"v1": 1}, "extra": 1}, 422, "body"),
        ("PUT", weights, {"weights": {"v1": 10**10, "v2": 1}}, 422, "services.shop.rules[1].split.v1"),
        ("PUT", weights, {"weights": {"v1": 0, "v2": 0}}, 422, "services.shop.rules[1].split"),
        ("PUT", weights, {"weights": [90, 10]}, 422, "weights"),
        ("PUT", weights, {}, 422, "weights"),
        ("PUT", weights, b"{not json", 400, "body"),
        ("PUT", weights, [1, 2], 400, "body"),
        ("PUT", "/v1/services/nope/rules/default/weights", {"weights": {"v1": 1}}, 404, "service"),
        ("PUT", "/v1/services/shop/rules/nope/weights", {"weights": {"v1": 1}}, 404, "rule"),
        ("PUT", "/v1/services/shop/rules/beta/weights", {"weights": {"v1": 1}}, 409, "rule"),
        ("PUT", "/v1/services/shop/rules", {"rules": [{"name": "x", "match": {"headers": {"a": {"regex": "("}}},
                                                        "version": "v1"}, {"version": "v1"}]},
         422, "services.shop.rules[0].match.headers.a.regex"),
        ("PUT", "/v1/services/shop/versions/v3", {"endpoints": ["nowhere"]}, 422,
         "services.shop.versions.v3.endpoints[0]"),
        ("PUT", weights, {"weights": {"v1": 1, "v2": 1}}, 400, "If-Match"),
        ("POST", "/v1/rollback", {"generation": 99}, 404, "generation"),
        ("POST", "/v1/explain", b'{"headers": {"x-user": "\\ud800"}}', 400, "body"),  # a lone surrogate
        ("POST", "/v1/explain", b"[" * 100_000 + b"]" * 100_000, 400, "body"),  # deeper than the parser goes
        ("PUT", weights, b'{"weights": {"v1": NaN, "v2": 1}}', 400, "body"),  # not JSON, though Python reads it
        ("PUT", "/v1/flags/f", b'{"variants": {"on": true}, "default": "on", "salt": "\\ud800"}', 400, "body"),
    ]
    async with aiohttp.ClientSession() as session:
        before = await versions(session, process.port, range(200))
        for method, path, body, status, field in cases:
            headers = {"If-Match": "soon"} if field == "If-Match" else {}
            got, answer = await admin.call(session, method, path, body, **headers)
            assert (got, answer.get("field")) == (status, field), (path, body, answer)
            assert answer["error"]
        status, state = await admin.call(session, "GET", "/v1/state")
        assert state["generation"] == 1
        assert await versions(session, process.port, range(200)) == before


async def test_new_version_and_rules_by_api_survive_a_restart(upstreams, spawn_proxy, tmp_path) -> None:
    v1, v2, v3 = await upstreams("v1"), await upstreams("v2"), await upstreams("v3")
    text = config_text(v1.address, v2.address, {"v1": 70, "v2": 30})
    process = spawn_proxy(text)
    await wait_admin(process)
    admin = Admin(process, tmp_path)
    async with aiohttp.ClientSession() as session:
        status, _ = await admin.call(session, "PUT", "/v1/services/shop/versions/v3", {"endpoints": [v3.address]})
        assert status == 200
        status, _ = await admin.call(session, "PUT", "/v1/services/shop/rules", {"rules": [
            {"name": "three", "match": {"headers": {"x-three": "1"}}, "version": "v3"},
            {"name": "default", "split": {"v1": 60, "v2": 30, "v3": 10}, "sticky": {"header": "x-user"}},
        ]})
        assert status == 200
        async with session.get(f"http://127.0.0.1:{process.port}/", headers={"X-Three": "1"}) as response:
            assert response.headers["X-Version"] == "v3"
        before = await versions(session, process.port, range(300))
        assert set(before.values()) == {"v1", "v2", "v3"}

    process.signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 15) == 0
    restarted = spawn_proxy(text)  # the same file: the admin's changes come from the state file
    await wait_admin(restarted)
    admin = Admin(restarted, tmp_path)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{restarted.port}/", headers={"X-Three": "1"}) as response:
            assert response.headers["X-Version"] == "v3"
        assert await versions(session, restarted.port, range(300)) == before  # every sticky user kept
        status, body = await admin.call(session, "GET", "/v1/generations")
        assert body["current"] == 4 and body["generations"][0]["what"] == "start"

        # A reload of the file keeps the admin's rules on top of it.
        Path(restarted.config_path).write_text(text.replace("70", "10"))
        restarted.signal(signal.SIGHUP)
        for _ in range(100):
            if "generation 5" in restarted.output():
                break
            await asyncio.sleep(0.05)
        status, state = await admin.call(session, "GET", "/v1/state")
        assert state["generation"] == 5
        assert state["services"]["shop"]["rules"][1]["split"] == {"v1": 60, "v2": 30, "v3": 10}


async def test_explain_and_dry_run(upstreams, spawn_proxy, tmp_path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    process = spawn_proxy(config_text(v1.address, v2.address, {"v1": 90, "v2": 10}))
    await wait_admin(process)
    admin = Admin(process, tmp_path)
    async with aiohttp.ClientSession() as session:
        status, why = await admin.call(session, "POST", "/v1/explain", {"host": "x", "headers": {"X-Beta": "1"}})
        assert status == 200
        assert (why["service"], why["rule"], why["version"]) == ("shop", "beta", "v2")
        assert why["rules"][0]["checks"] == [{"on": "header", "name": "x-beta", "condition": {"exact": "1"},
                                              "value": "1", "ok": True}]
        assert why["next_endpoint"] == v2.address

        seen = await versions(session, process.port, range(50))
        for user in ("u1", "u2", "u3"):
            status, why = await admin.call(session, "POST", "/v1/explain", {"host": "x", "headers": {"X-User": user}})
            assert why["rule"] == "default" and why["key"] == user
            assert why["version"] == seen[user]  # explain agrees with what the proxy really did
            assert why["rules"][0]["matched"] is False and why["weights"] == {"v1": "90%", "v2": "10%"}
        status, why = await admin.call(session, "POST", "/v1/explain", {"host": "x"})
        assert why["version"] is None and "weighted random" in why["why"]

        weights = "/v1/services/shop/rules/default/weights?dry_run=true"
        status, preview = await admin.call(session, "PUT", weights, {"weights": {"v1": 80, "v2": 20}})
        assert status == 200 and preview["dry_run"] is True
        assert preview["splits"] == [{"service": "shop", "rule": "default", "moved_buckets": 1000,
                                      "moved_percent": 10.0,
                                      "moves": [{"from": "v1", "to": "v2", "buckets": 1000, "percent": 10.0}]}]
        status, bad = await admin.call(session, "PUT", weights, {"weights": {"v9": 1}})
        assert status == 422 and bad["field"] == "services.shop.rules[1].split.v9"
        status, state = await admin.call(session, "GET", "/v1/state")
        assert state["generation"] == 1  # a dry run changes nothing
        assert await versions(session, process.port, range(50)) == seen


async def test_draining_an_endpoint_lets_it_finish_and_sends_it_nothing_new(upstreams, spawn_proxy, tmp_path) -> None:
    a, b = await upstreams("v1"), await upstreams("v1")
    process = spawn_proxy(yaml.safe_dump({
        "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
        "services": {"shop": service({"v1": [a.address, b.address]}, version="v1")},
    }))
    await wait_admin(process)
    admin = Admin(process, tmp_path)
    url = f"http://127.0.0.1:{process.port}"
    async with aiohttp.ClientSession() as one, aiohttp.ClientSession() as two, aiohttp.ClientSession() as session:
        slow = [asyncio.create_task(client.get(url + "/sleep?s=1")) for client in (one, two)]
        await asyncio.sleep(0.3)
        assert len(a.seen) == 1 and len(b.seen) == 1  # one slow request on each endpoint
        status, body = await admin.call(session, "PUT", "/v1/services/shop/versions/v1",
                                        {"endpoints": [a.address, b.address], "draining": [b.address]})
        assert status == 200, body
        assert [(await task).status for task in slow] == [200, 200]  # b finished what it had
        for _ in range(20):
            async with session.get(url + "/after") as response:
                assert response.status == 200
        assert len(b.seen) == 1 and len(a.seen) == 21  # and got nothing new
        status, state = await admin.call(session, "GET", "/v1/state")
        assert state["services"]["shop"]["versions"]["v1"]["health"] == {a.address: "up", b.address: "draining"}
        status, bad = await admin.call(session, "PUT", "/v1/services/shop/versions/v1",
                                       {"endpoints": [a.address], "draining": [b.address]})
        assert status == 422 and bad["field"] == "services.shop.versions.v1.draining[0]"
