"""Managed proxies following a controller, as separate processes on real sockets: every change is
served by every live proxy before it answers, sticky users land identically on every proxy, a dead
proxy stops holding changes up, and proxies keep serving (and start) from their cache while the
controller is down, then converge when it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from turnout.core import wire

from ..conftest import ProxyProcess
from ..helpers import picks
from .test_controller import Controller, controller_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def managed_config(url: str, token_file: Path, name: str) -> str:
    return yaml.safe_dump({"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
                           "controller": {"url": url, "token_file": str(token_file), "id": name}})


class Setup:
    def __init__(self, tmp_path: Path, v1: str, v2: str, weights: dict[str, int] | None = None,
                 **extra: Any) -> None:
        """``extra``: more top-level sections of the controller's config (rollouts, templates)."""
        self.tmp_path = tmp_path
        self.port = free_port()
        document = {**controller_config(weights or {"v1": 90, "v2": 10}), **extra}
        document["controller"] = {"listen": f"127.0.0.1:{self.port}"}
        document["services"]["shop"]["versions"] = {"v1": [v1], "v2": [v2]}
        (tmp_path / "controller.yaml").write_text(yaml.safe_dump(document))
        self.controller = Controller(tmp_path / "controller.yaml")
        self.proxies: dict[str, ProxyProcess] = {}

    def start_proxy(self, name: str) -> ProxyProcess:
        folder = self.tmp_path / name
        folder.mkdir(exist_ok=True)
        path = folder / "turnout.yaml"
        path.write_text(managed_config(f"http://127.0.0.1:{self.port}", self.tmp_path / "controller.token", name))
        self.proxies[name] = ProxyProcess(path)
        return self.proxies[name]

    def stop(self) -> None:
        for process in self.proxies.values():
            process.stop()
        self.controller.stop()


@pytest.fixture
async def fleet(upstreams: Any, tmp_path: Path) -> AsyncIterator[Setup]:
    """A controller routing to two test upstreams (v1, v2); proxies are started by each test."""
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    setup = Setup(tmp_path, v1.address, v2.address)
    yield setup
    setup.stop()


async def until(check: Any, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def proxy_generations(setup: Setup, session: aiohttp.ClientSession) -> dict[str, tuple[int, bool]]:
    _, listing = await setup.controller.call(session, "GET", "/v1/proxies")
    return {p["proxy"]: (p["generation"], p["live"]) for p in listing["proxies"]}


async def test_three_proxies_serve_every_change_before_it_answers(fleet: Setup, tmp_path: Path) -> None:
    setup = fleet
    edges = [setup.start_proxy(f"edge-{i}") for i in range(3)]
    async with aiohttp.ClientSession() as session:
        async def all_at(generation: int) -> bool:
            return all(g == generation for g, _ in (await proxy_generations(setup, session)).values()) \
                and len(await proxy_generations(setup, session)) == 3
        await until(lambda: all_at(1))
        users = range(800)
        at_one = [await picks(edge.port, users) for edge in edges]
        assert at_one[0] == at_one[1] == at_one[2]
        assert 40 < Counter(at_one[0].values())["v2"] < 130  # ~80 of 800
        for step, share in enumerate((20, 35, 50), start=2):
            weights = {"weights": {"v1": 100 - share, "v2": share}}
            status, body = await setup.controller.call(
                session, "PUT", "/v1/services/shop/rules/default/weights", weights)
            assert status == 200 and body["generation"] == step and body["converged"] is True
            assert sorted((p["proxy"], p["generation"]) for p in body["proxies"]) == \
                [("edge-0", step), ("edge-1", step), ("edge-2", step)]
            now = [await picks(edge.port, users) for edge in edges]  # answered, so served everywhere
            assert now[0] == now[1] == now[2]
            assert all(now[0][u] == "v2" for u, v in at_one[0].items() if v == "v2")  # nobody left v2

        # 10,000 sticky keys land identically on the three (fetched in parallel, 8 keys at a time each).
        many = range(10_000)
        async def spread(port: int) -> dict[str, str]:
            parts = await asyncio.gather(*(picks(port, range(i, 10_000, 8)) for i in range(8)))
            return {user: version for part in parts for user, version in part.items()}
        views = await asyncio.gather(*(spread(edge.port) for edge in edges))
        assert len(views[0]) == len(many) and views[0] == views[1] == views[2]

        # Each proxy reports its counters with its polls: what rollout analysis will read.
        await setup.controller.call(session, "POST", "/v1/flags/beta/disable")  # a change: everyone polls
        _, listing = await setup.controller.call(session, "GET", "/v1/proxies?stats=true")
        for proxy in listing["proxies"]:
            counted = sum(entry["responses"][2] for worker in proxy["stats"]["workers"]
                          for entry in worker["versions"])
            assert counted >= 10_000 + 3 * len(users), proxy["proxy"]

        # A managed proxy's own admin API refuses routing changes, naming the controller.
        admin = Path(edges[0].config_path.parent / "admin.token").read_text().strip()
        async with session.put(edges[0].admin_url() + "/v1/services/shop/rules/default/weights",
                               json={"weights": {"v1": 1}}, headers={"Authorization": f"Bearer {admin}"}) as r:
            assert r.status == 409 and f"127.0.0.1:{setup.port}" in (await r.json())["error"]

        # edge-2 dies: it stops holding changes up once it is no longer live.
        os.kill(edges[2].process.pid, signal.SIGKILL)
        edges[2].process.wait(10)
        started = time.monotonic()
        status, body = await setup.controller.call(
            session, "PUT", "/v1/services/shop/rules/default/weights", {"weights": {"v1": 40, "v2": 60}})
        assert status == 200 and time.monotonic() - started < 8  # the live bound (5 s), not the timeout
        assert body["converged"] is True
        assert {p["proxy"]: p["live"] for p in body["proxies"]} == {"edge-0": True, "edge-1": True, "edge-2": False}

        # Restarted, it serves its cache at once, then the current generation.
        setup.proxies["edge-2"].log.close()
        edges[2] = setup.start_proxy("edge-2")
        assert "serving the cached generation 5" in edges[2].output()
        await until(lambda: all_at(6))
        assert await picks(edges[2].port, users) == await picks(edges[0].port, users)


async def test_controller_down_proxies_serve_their_cache_and_converge_when_it_is_back(
        fleet: Setup, tmp_path: Path) -> None:
    setup = fleet
    first = setup.start_proxy("edge-0")
    async with aiohttp.ClientSession() as session:
        status, _ = await setup.controller.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                                {"weights": {"v1": 70, "v2": 30}})
        assert status == 200
        await until(lambda: _served(setup, session, "edge-0", 2))
        users = range(1000)
        before = await picks(first.port, users)

        setup.controller.stop(signal.SIGKILL)
        assert await picks(first.port, users) == before  # serving on, controller gone
        # A proxy started now has only its cache: edge-1 was never run, so give it edge-0's.
        (tmp_path / "edge-1").mkdir()
        cache = first.config_path.with_name("turnout.yaml.snapshot.json")
        (tmp_path / "edge-1" / "turnout.yaml.snapshot.json").write_bytes(cache.read_bytes())
        second = setup.start_proxy("edge-1")
        assert await picks(second.port, users) == before
        assert "controller http://127.0.0.1" in first.output() and "unreachable" in first.output()

        setup.controller = Controller(tmp_path / "controller.yaml")  # back, same state file
        await until(lambda: _served(setup, session, "edge-0", 3))
        await until(lambda: _served(setup, session, "edge-1", 3))
        assert await picks(first.port, users) == before == await picks(second.port, users)  # nobody moved


async def _served(setup: Setup, session: aiohttp.ClientSession, name: str, generation: int) -> bool:
    try:
        found = await proxy_generations(setup, session)
    except aiohttp.ClientError:
        return False
    return found.get(name, (0, False))[0] >= generation


def test_wire_poll_is_what_a_proxy_sends() -> None:
    poll = wire.Poll("edge-0", "127.0.0.1:8080", 3, 0, "", {"workers": []})
    assert wire.decode(wire.encode(poll)) == poll


async def test_changes_through_the_controller_under_load_fail_nothing(fleet: Setup) -> None:
    from .test_zero_drops import load

    setup = fleet
    edges = [setup.start_proxy(f"edge-{i}") for i in range(3)]
    async with aiohttp.ClientSession() as session:
        async def all_live() -> bool:
            return len([g for g, live in (await proxy_generations(setup, session)).values() if live]) == 3
        await until(all_live)
        stop, seen, failures = asyncio.Event(), list[tuple[str, str]](), list[str]()
        clients = [asyncio.create_task(load(edge.port, stop, keep_alive, seen, failures))
                   for edge in edges for keep_alive in (True, False)]
        weights = "/v1/services/shop/rules/default/weights"
        for step in range(20):
            share = [5, 10, 20, 30, 50, 40, 60, 80, 70, 90][step % 10]
            status, body = await setup.controller.call(session, "PUT", weights,
                                                       {"weights": {"v1": 100 - share, "v2": share}})
            assert status == 200 and body["converged"] is True, body
            await asyncio.sleep(0.2)
        status, body = await setup.controller.call(session, "PUT", weights, {"weights": {"v1": 0, "v2": 1}})
        assert status == 200 and body["converged"] is True  # the swap: everyone on v2 in one step
        await asyncio.sleep(0.5)
        status, body = await setup.controller.call(session, "POST", "/v1/rollback", {"generation": 1})
        assert status == 200 and body["converged"] is True
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
    assert failures == []
    assert len(seen) > 1000 and {version for _, version in seen} == {"v1", "v2"}

async def test_a_proxy_that_refuses_a_snapshot_is_listed_and_catches_up(fleet: Setup, tmp_path: Path) -> None:
    setup = fleet
    edge = setup.start_proxy("edge-0")
    async with aiohttp.ClientSession() as session:
        await until(lambda: _served(setup, session, "edge-0", 1))
        # A version whose CA file the proxy cannot read: the controller cannot check files that live
        # on proxies, so the proxy refuses it and keeps serving generation 1.
        status, body = await setup.controller.call(
            session, "PUT", "/v1/services/shop/versions/v3",
            {"endpoints": ["https://127.0.0.1:9"], "tls": {"ca": str(tmp_path / "missing-ca.pem")}})
        assert status == 200 and body["converged"] is True
        refused = body["proxies"][0]["refused"]
        assert refused["generation"] == 2 and "missing-ca.pem" in refused["reason"]
        assert "refused generation 2 from the controller, still serving 1" in edge.output()
        assert set((await picks(edge.port, range(20))).values()) <= {"v1", "v2"}

        # The next generation, without the bad version, is taken whole.
        status, body = await setup.controller.call(session, "POST", "/v1/rollback", {"generation": 1})
        assert status == 200 and body["converged"] is True
        assert body["proxies"][0]["generation"] == 3 and "refused" not in body["proxies"][0]


async def test_a_managed_proxy_with_workers_fans_each_snapshot_out(fleet: Setup, tmp_path: Path) -> None:
    setup = fleet
    folder = tmp_path / "edge-0"
    folder.mkdir()
    path = folder / "turnout.yaml"
    path.write_text(managed_config(f"http://127.0.0.1:{setup.port}", tmp_path / "controller.token", "edge-0"))
    edge = setup.proxies["edge-0"] = ProxyProcess(path, workers=2)
    async with aiohttp.ClientSession() as session:
        await until(lambda: _served(setup, session, "edge-0", 1))
        status, body = await setup.controller.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                                   {"weights": {"v1": 0, "v2": 1}})
        assert status == 200 and body["converged"] is True and body["proxies"][0]["generation"] == 2
        connector = aiohttp.TCPConnector(force_close=True)  # new connections: both workers answer
        async with aiohttp.ClientSession(connector=connector) as fresh:
            for i in range(40):
                async with fresh.get(f"http://127.0.0.1:{edge.port}/", headers={"X-User": f"u{i}"}) as r:
                    assert r.headers["X-Version"] == "v2"
        admin = (folder / "admin.token").read_text().strip()
        async with session.get(edge.admin_url() + "/v1/state", headers={"Authorization": f"Bearer {admin}"}) as r:
            state = await r.json()
        assert [w["generation"] for w in state["workers"]] == [2, 2]


async def test_sighup_applies_a_managed_proxys_own_file_with_the_routing_it_serves(
        fleet: Setup, tmp_path: Path) -> None:
    setup = fleet
    edge = setup.start_proxy("edge-0")
    async with aiohttp.ClientSession() as session:
        await until(lambda: _served(setup, session, "edge-0", 1))
        big = {"X-Padding": "p" * 3000}

        async def status_of_big() -> int:  # on a new connection: open ones keep the limits they began with
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh, \
                    fresh.get(f"http://127.0.0.1:{edge.port}/", headers=big) as response:
                return response.status
        assert await status_of_big() == 200
        local = yaml.safe_load(edge.config_path.read_text())
        edge.config_path.write_text(yaml.safe_dump({**local, "services": {"x": {}}}))
        edge.signal(signal.SIGHUP)
        await until(lambda: _logged(edge, "reload refused"))
        assert "keeps its controller section and has no services" in edge.output()
        assert await status_of_big() == 200  # nothing changed

        edge.config_path.write_text(yaml.safe_dump({**local, "limits": {"max_header_bytes": 2048}}))
        edge.signal(signal.SIGHUP)
        await until(lambda: _logged(edge, "reloaded"))
        assert await status_of_big() == 431
        assert (await proxy_generations(setup, session))["edge-0"][0] == 1  # the same generation
        async with session.get(f"http://127.0.0.1:{edge.port}/", headers={"X-User": "u1"}) as response:
            assert response.status == 200  # still routed by the controller's snapshot


async def _logged(process: ProxyProcess, text: str) -> bool:
    return text in process.output()
