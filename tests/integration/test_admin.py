"""The admin API: authentication on every route, the state view, Prometheus metrics that count exactly
what was sent, readiness during a drain; on real sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy import admin
from proxy.worker import Worker
from turnout.core.errors import ConfigError
from turnout.core.reader import parse

from ..helpers import RawUpstream, service

TOKEN = "s3cret-token"
ROUTES = ["/v1/state", "/metrics", "/v1/flags", "/v1/openapi.json", "/v1/nothing-here"]


@pytest.fixture
async def admin_server() -> AsyncIterator[Callable[[Worker], Awaitable[str]]]:
    servers: list[TestServer] = []

    async def start(worker: Worker) -> str:
        server = TestServer(admin.make_app(worker, TOKEN), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_every_route_needs_the_token_and_pages_are_refused(upstreams, proxy, admin_server) -> None:
    up = await upstreams("v1")
    worker = await proxy({"s": service({"v1": [up.address]}, version="v1")})
    base = await admin_server(worker)
    async with aiohttp.ClientSession() as session:
        for route in ROUTES:
            for headers in ({}, bearer("wrong"), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
                async with session.get(base + route, headers=headers) as response:
                    assert response.status == 401, (route, headers)
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                    assert "error" in await response.json()
            async with session.get(base + route, headers={**bearer(), "Origin": "http://evil.test"}) as response:
                assert response.status == 403
        async with session.get(base + "/v1/nothing-here", headers=bearer()) as response:
            assert response.status == 404 and "error" in await response.json()
        async with session.post(base + "/v1/state", headers=bearer(), json={}) as response:
            assert response.status == 405 and "error" in await response.json()
        # None of it is reachable through the data port: there, these paths are just routed upstream.
        for route in ROUTES:
            async with session.get(f"http://127.0.0.1:{worker.port}{route}", headers=bearer()) as response:
                assert (await response.json())["path_qs"] == route
    assert len(up.seen) == len(ROUTES)


async def test_state_view(upstreams, proxy, admin_server) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    worker = await proxy({"shop": {
        "hosts": ["shop.test", "*.shop.test"],
        "versions": {"v1": [v1.address], "v2": [v2.address]},
        "rules": [
            {"name": "beta", "match": {"headers": {"x-beta": "1"}, "method": ["GET"]}, "version": "v2"},
            {"name": "default", "split": {"v1": 750_000, "v2": 250_000}, "sticky": {"cookie": "uid"}},
        ],
    }})
    base = await admin_server(worker)
    async with aiohttp.ClientSession() as session, session.get(base + "/v1/state", headers=bearer()) as response:
        state = await response.json()
    assert state["generation"] == 1
    assert state["workers"] == [{"pid": os.getpid(), "generation": 1, "connections": 0}]
    shop = state["services"]["shop"]
    assert shop["hosts"] == ["shop.test", "*.shop.test"]
    assert shop["versions"] == {"v1": {"endpoints": [v1.address], "health": {v1.address: "up"}},
                                "v2": {"endpoints": [v2.address], "health": {v2.address: "up"}}}
    assert shop["rules"][0] == {"name": "beta", "match": {"headers": {"x-beta": {"exact": "1"}}, "method": ["GET"]},
                                "version": "v2"}
    assert shop["rules"][1] == {"name": "default", "split": {"v1": 750_000, "v2": 250_000},
                                "sticky": {"cookie": "uid"}, "buckets": {"v1": 7500, "v2": 2500}}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


async def test_metrics_count_exactly_what_was_sent(upstreams, proxy, admin_server) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    closed = await RawUpstream(b"").start()
    address = closed.address
    await closed.stop()
    worker = await proxy({
        "s": {"hosts": ["s.test"], "versions": {"v1": [v1.address], "v2": [v2.address], "dark": [], "gone": [address]},
              "rules": [
                  {"name": "dark", "match": {"headers": {"x-to": "dark"}}, "version": "dark"},
                  {"name": "gone", "match": {"headers": {"x-to": "gone"}}, "version": "gone"},
                  {"name": "default", "split": {"v1": 1, "v2": 1}, "sticky": {"header": "x-user"}},
              ]},
    })
    base = await admin_server(worker)
    sent: dict[str, int] = {"v1": 0, "v2": 0}
    url = f"http://127.0.0.1:{worker.port}"
    async with aiohttp.ClientSession() as session:
        for i in range(60):
            async with session.get(url + "/", headers={"Host": "s.test", "X-User": f"u{i}"}) as response:
                sent[response.headers["X-Version"]] += 1
        for _ in range(3):
            async with session.get(url + "/", headers={"Host": "s.test", "X-To": "dark"}) as response:
                assert response.status == 503
        for _ in range(2):
            async with session.get(url + "/", headers={"Host": "s.test", "X-To": "gone"}) as response:
                assert response.status == 502
        for _ in range(4):
            async with session.get(url + "/", headers={"Host": "elsewhere.test"}) as response:
                assert response.status == 404
        async with session.get(base + "/metrics", headers=bearer()) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
    found = samples(text)

    def value(name: str, **labels: str) -> float:
        return found[(name, frozenset(labels.items()))]

    assert sent["v1"] + sent["v2"] == 60 and sent["v1"] > 0 and sent["v2"] > 0
    for version in ("v1", "v2"):
        assert value("turnout_requests_total", service="s", version=version, code_class="2xx") == sent[version]
        assert value("turnout_request_duration_seconds_count", service="s", version=version) == sent[version]
        inf = value("turnout_request_duration_seconds_bucket", service="s", version=version, le="+Inf")
        assert inf == sent[version]
    assert value("turnout_requests_total", service="s", version="dark", code_class="5xx") == 3
    assert value("turnout_requests_total", service="s", version="gone", code_class="5xx") == 2
    assert value("turnout_upstream_connect_errors_total", service="s", version="gone") == 2
    assert value("turnout_unrouted_requests_total", code_class="4xx") == 4
    assert value("turnout_generation", worker="0") == 1
    assert value("turnout_active_connections") >= 1


async def test_readiness_fails_once_draining(upstreams, proxy, admin_server) -> None:
    up = await upstreams("v1")
    worker = await proxy({"s": service({"v1": [up.address]}, version="v1")}, limits={"shutdown_grace": "1s"})
    base = await admin_server(worker)
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/ready") as response:  # probes need no token
            assert response.status == 200
        async with session.post(base + "/ready") as response:  # anything else does
            assert response.status == 401
        drain = asyncio.create_task(worker.shutdown())
        await asyncio.sleep(0.2)
        async with session.get(base + "/ready") as response:
            assert response.status == 503 and (await response.json())["ready"] is False
        async with session.get(f"http://127.0.0.1:{worker.port}/", headers=bearer()) as response:
            assert response.status == 200  # still serving during the grace period
        async with session.get(base + "/live") as response:
            assert response.status == 200 and await response.json() == {"live": True}
        await drain


def test_admin_config_rules(tmp_path: Path) -> None:
    base = "services: {s: {versions: {v1: []}, version: v1}}\n"
    with pytest.raises(ConfigError, match=r"admin\.listen: 0\.0\.0\.0:9901 is not a loopback address"):
        parse("admin: {listen: 0.0.0.0:9901}\n" + base, str(tmp_path / "t.yaml"))
    config = parse("admin: {listen: 0.0.0.0:9901, token_env: TOKEN}\n" + base, str(tmp_path / "t.yaml"))
    assert config.admin is not None and config.admin.token_env == "TOKEN"
    config = parse("admin: {}\n" + base, str(tmp_path / "t.yaml"))
    assert config.admin is not None
    assert (config.admin.listen.host, config.admin.listen.port) == ("127.0.0.1", 9901)
    assert config.admin.token_file == str(tmp_path / "admin.token")
    token = admin.load_token(config.admin, "t.yaml")
    assert stat.S_IMODE(os.stat(tmp_path / "admin.token").st_mode) == 0o600
    assert admin.load_token(config.admin, "t.yaml") == token  # the same token on the next start
    nope = parse("admin: {token_env: TURNOUT_NOPE}\n" + base, "t.yaml").admin
    assert nope is not None
    with pytest.raises(ConfigError, match=r"admin\.token_env: environment variable TURNOUT_NOPE is not set"):
        admin.load_token(nope, "t.yaml")


async def test_the_proxy_process_serves_the_admin_api(upstreams, spawn_proxy, tmp_path: Path) -> None:
    up = await upstreams("v1")
    process = spawn_proxy(yaml.safe_dump({
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "services": {"s": service({"v1": [up.address]}, version="v1")},
    }))
    base = process.admin_url()
    token = (tmp_path / "admin.token").read_text().strip()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{process.port}/x") as response:
            assert response.status == 200
        async with session.get(f"{base}/metrics", headers=bearer(token)) as response:
            text = await response.text()
        async with session.get(f"{base}/metrics") as response:
            assert response.status == 401
    assert samples(text)[("turnout_requests_total",
                          frozenset({"service": "s", "version": "v1", "code_class": "2xx"}.items()))] == 1
    process.signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 15) == 0
