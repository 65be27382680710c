"""Docker label discovery against a real engine (``tests/dockerengine.py``): containers labelled
``turnout.service`` become endpoints as they start and stop, in a standalone proxy and through a
controller to the proxies that follow it; bad labels are skipped with a log line; a discovery event
never undoes an admin change."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from ..conftest import ProxyProcess
from ..dockerengine import Engine, controller_and_edge, docker_engine  # noqa: F401 - the fixture
from .test_managed import free_port, until


async def answers(port: int, count: int, host: str = "shop", **headers: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            async with session.get(f"http://127.0.0.1:{port}/", headers={"Host": host, "X-User": f"u{i}",
                                                                          **headers}) as response:
                seen[(await response.text()).strip() if response.status == 200 else str(response.status)] += 1
    return seen


def labels(version: str, port: int, **more: str) -> dict[str, str]:
    return {"turnout.service": "shop", "turnout.version": version, "turnout.port": str(port),
            "turnout.host": "shop", **more}


async def test_a_standalone_proxy_follows_labelled_containers(docker_engine: Engine, tmp_path: Path) -> None:  # noqa: F811
    engine = docker_engine
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
                                    "providers": {"docker": {"endpoint": engine.url}}}))
    process = ProxyProcess(path)
    try:
        assert await answers(process.port, 2) == {"404": 2}  # nothing found yet: no service for that host
        p1, p2, p3 = free_port(), free_port(), free_port()
        engine.web(p1, "v1", labels("v1", p1, **{"turnout.weight": "3"}))

        async def only(expected: set[str]) -> bool:
            return set(await answers(process.port, 6)) == expected
        await until(lambda: only({"v1"}), 20)
        second = engine.web(p2, "v2", labels("v2", p2, **{"turnout.weight": "1"}))
        engine.web(p3, "bad", {"turnout.service": "shop", "turnout.version": "v9", "turnout.port": "http"})
        await until(lambda: only({"v1", "v2"}), 20)
        split = await answers(process.port, 200)
        assert 100 < split["v1"] < 190 and split["v2"] > 10, split  # weights 3:1 from labels
        assert "turnout.port='http' must be a port number" in process.output()

        # An admin change on top: the next discovery event does not undo it.
        token = (tmp_path / "admin.token").read_text().strip()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as admin, \
                admin.put(process.admin_url() + "/v1/services/shop/rules/default/weights",
                          json={"weights": {"v1": 0, "v2": 1}}) as r:
            assert r.status == 200, await r.text()
        await until(lambda: only({"v2"}), 10)
        p4 = free_port()
        engine.web(p4, "v2", labels("v2", p4))  # a second v2 container: a discovery event
        await until(lambda: _said(process, "shop: v1 (1), v2 (2)"), 20)
        assert set(await answers(process.port, 20)) == {"v2"}  # the admin's weights still hold

        second.stop(timeout=2)  # one v2 container goes: its endpoint goes, the other serves
        await asyncio.sleep(1)
        assert set(await answers(process.port, 20)) == {"v2"}

        # A container killed (no stop, no goodbye) leaves the routing within a bound.
        token = (tmp_path / "admin.token").read_text().strip()

        async def endpoints() -> list[str]:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as admin, \
                    admin.get(process.admin_url() + "/v1/state") as r:
                return list((await r.json())["services"]["shop"]["versions"]["v2"]["endpoints"])
        assert await endpoints() == [f"127.0.0.1:{p4}"]
        p5 = free_port()
        doomed = engine.web(p5, "v2", labels("v2", p5))
        await until(lambda: _has(endpoints, f"127.0.0.1:{p5}", True), 10)
        killed_at = time.monotonic()
        doomed.kill()
        await until(lambda: _has(endpoints, f"127.0.0.1:{p5}", False), 10)
        assert time.monotonic() - killed_at < 5
    finally:
        process.stop()
        engine.cleanup()


async def _has(endpoints: Any, endpoint: str, wanted: bool) -> bool:
    return (endpoint in await endpoints()) == wanted


async def _said(process: ProxyProcess, text: str) -> bool:
    return text in process.output()


async def test_the_controller_discovers_for_the_proxies_that_follow_it(docker_engine: Engine,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    engine = docker_engine
    controller, edge = controller_and_edge(engine, tmp_path)
    try:
        p1 = free_port()
        started = time.monotonic()
        engine.web(p1, "blue", labels("blue", p1))

        async def served() -> bool:
            return set(await answers(edge.port, 4)) == {"blue"}
        await until(served, 20)
        assert time.monotonic() - started < 20
        async with aiohttp.ClientSession() as session:
            _, state = await controller.call(session, "GET", "/v1/state")
        assert state["services"]["shop"]["versions"]["blue"]["endpoints"] == [f"127.0.0.1:{p1}"]
    finally:
        edge.stop()
        controller.stop()
        engine.cleanup()
