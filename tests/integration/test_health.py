"""Endpoint health acts inside a version only: ejection and active checks
narrow a version's endpoints, retries go to another endpoint of the same version, and a version with
no healthy endpoint answers 503 while the other versions serve normally."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from ..helpers import RawUpstream


async def failing_app(status: int, seen: list[str], healthy: dict[str, bool] | None = None) -> TestServer:
    """Answers every request with ``status``; /healthz answers 200 or 503 as ``healthy`` says."""
    async def handle(request: web.Request) -> web.Response:
        if request.path == "/healthz":
            return web.Response(status=200 if (healthy or {}).get("ok", True) else 503)
        seen.append(request.path)
        return web.Response(status=status, text="broken")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def closed_address() -> str:
    raw = await RawUpstream(b"").start()
    address = raw.address
    await raw.stop()
    await asyncio.sleep(0.05)
    return address


async def get_all(port: int, count: int, headers: dict[str, str] | None = None) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(f"http://127.0.0.1:{port}/", headers=headers or {}) as response:
                seen[f"{response.status} {response.headers.get('X-Version', '-')}"] += 1
    return seen


async def test_an_endpoint_that_refuses_connections_is_ejected_within_its_version(upstreams, proxy) -> None:
    a, b, other = await upstreams("v1"), await upstreams("v1"), await upstreams("v2")
    dead = await closed_address()
    worker = await proxy({"s": {"versions": {"v1": [a.address, dead, b.address], "v2": [other.address]},
                                "rules": [{"name": "default", "split": {"v1": 1, "v2": 0}}]}})
    seen = await get_all(worker.port, 60)
    assert seen == {"200 v1": 60}  # connect failures were retried on the other endpoints of v1
    assert len(a.seen) + len(b.seen) == 60 and min(len(a.seen), len(b.seen)) > 20
    assert other.seen == []  # never another version
    assert worker.health.status(dead) == "ejected"
    snapshot = worker.snapshot()
    v1 = next(v for v in snapshot["versions"] if v["version"] == "v1")
    assert v1["ejections"] == 1 and v1["retries"] >= 5 and v1["connect_errors"] == 5


async def test_an_endpoint_answering_5xx_is_ejected_and_its_requests_retried(upstreams, proxy) -> None:
    a, b = await upstreams("v1"), await upstreams("v1")
    bad_seen: list[str] = []
    bad = await failing_app(500, bad_seen)
    worker = await proxy({"s": {"versions": {"v1": [a.address, f"127.0.0.1:{bad.port}", b.address]},
                                "version": "v1", "retries": {"attempts": 1, "on_status": [500]}}})
    seen = await get_all(worker.port, 60)
    assert seen == {"200 v1": 60}  # every 500 was read, dropped and retried on a healthy endpoint
    assert len(bad_seen) == 5  # five failures in a row, then ejected: no more traffic
    assert worker.health.status(f"127.0.0.1:{bad.port}") == "ejected"
    await bad.close()


async def test_a_version_whose_endpoints_all_fail_checks_answers_503_alone(upstreams, proxy) -> None:
    good = await upstreams("v1")
    healthy = {"ok": True}
    sick_seen: list[str] = []
    sick = [await failing_app(200, sick_seen, healthy) for _ in range(2)]
    worker = await proxy({"s": {
        "versions": {"v1": [good.address],
                     "v2": {"endpoints": [f"127.0.0.1:{server.port}" for server in sick],
                            "health": {"path": "/healthz", "interval": "100ms", "timeout": "500ms",
                                       "unhealthy": 2, "healthy": 2}}},
        "rules": [{"name": "to-v2", "match": {"headers": {"x-v": "2"}}, "version": "v2"},
                  {"name": "default", "version": "v1"}],
    }})
    assert await get_all(worker.port, 4, {"X-V": "2"}) == {"200 -": 4}  # checks pass: v2 serves
    healthy["ok"] = False
    for _ in range(50):
        if all(worker.health.status(f"127.0.0.1:{s.port}") == "failing checks" for s in sick):
            break
        await asyncio.sleep(0.05)
    served_before = len(sick_seen)
    assert await get_all(worker.port, 10, {"X-V": "2"}) == {"503 -": 10}  # v2's share: 503, not v1
    assert await get_all(worker.port, 10) == {"200 v1": 10}  # v1 serves normally meanwhile
    assert len(sick_seen) == served_before
    healthy["ok"] = True
    for _ in range(50):
        if not worker.health.down:
            break
        await asyncio.sleep(0.05)
    assert await get_all(worker.port, 4, {"X-V": "2"}) == {"200 -": 4}  # back after two passing checks
    for server in sick:
        await server.close()


async def test_retries_never_resend_a_request_with_a_body(upstreams, proxy) -> None:
    bad_seen: list[str] = []
    bad = await failing_app(503, bad_seen)
    good = await upstreams("v1")
    worker = await proxy({"s": {"versions": {"v1": [f"127.0.0.1:{bad.port}", good.address]}, "version": "v1",
                                "retries": {"attempts": 2, "on_status": [503]}}})
    async with aiohttp.ClientSession() as session, \
            session.post(f"http://127.0.0.1:{worker.port}/", data=b"pay once") as response:
        assert response.status == 503  # the answer is passed on; the POST is not sent twice
    assert bad_seen == ["/"] and good.seen == []
    await bad.close()


async def test_a_lone_endpoint_is_never_ejected_by_passive_checks(upstreams, proxy, caplog) -> None:
    """The compose case: one container per version. Its 5xx blip reaches clients as the app's own
    answers, and when the app recovers it is served at once; it never becomes 30 s of 503."""
    import logging

    caplog.set_level(logging.INFO, logger="turnout")
    seen: list[str] = []
    answers = {"status": 500}

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(status=answers["status"], headers={"X-Version": "v1"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    lone = TestServer(app, host="127.0.0.1")
    await lone.start_server()
    worker = await proxy({"s": {"versions": {"v1": [f"127.0.0.1:{lone.port}"]}, "version": "v1"}})
    assert await get_all(worker.port, 12) == {"500 v1": 12}  # the app's answers, not "no healthy endpoint"
    assert len(seen) == 12 and worker.health.status(f"127.0.0.1:{lone.port}") == "up"
    answers["status"] = 200
    assert await get_all(worker.port, 5) == {"200 v1": 5}  # recovered: served at once
    held = [r.getMessage() for r in caplog.records if "keeps failing" in r.getMessage()]
    assert len(held) == 1 and held[0].startswith(f"service s version v1: endpoint 127.0.0.1:{lone.port} keeps failing")
    await lone.close()


async def test_ejection_is_logged_with_service_version_and_reason_and_can_be_turned_off(
        upstreams, proxy, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="turnout")
    a = await upstreams("v1")
    dead = await closed_address()
    worker = await proxy({"s": {"versions": {"v1": [a.address, dead]}, "version": "v1",
                                "outlier": {"base_ejection": "300ms"}}})
    assert await get_all(worker.port, 20) == {"200 v1": 20}
    ejected = [r.getMessage() for r in caplog.records if "ejected for" in r.getMessage()]
    assert ejected == [f"service s version v1: endpoint {dead} ejected for 0.3s: 5 connect failures, timeouts "
                       "or 5xx answers in a row"]
    await asyncio.sleep(1.3)  # the sweeper ends the ejection (it runs every second)
    assert any(f"endpoint {dead} is back" in r.getMessage() for r in caplog.records)

    off = await proxy({"s": {"versions": {"v1": [a.address, dead]}, "version": "v1",
                             "outlier": {"enabled": False}}})
    assert await get_all(off.port, 20) == {"200 v1": 20}  # connect failures retried, never ejected
    assert off.health.status(dead) == "up"
