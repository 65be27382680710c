"""Rollouts end to end: a controller, two managed proxies (separate processes) and a load loop of
sticky users through both, on real sockets. A healthy canary completes with zero failed requests; a
canary failing 5 % is aborted by analysis of the proxies' own counts, and every sticky user who was on
it is back on stable; blue/green promotes under load and undo restores blue at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .test_managed import Setup, until
from .test_zero_drops import USERS

TEMPLATES = {"errors": {"metrics": [{"name": "success-rate", "condition": "success_rate >= 0.99", "interval": "2s",
                                     "count": 1, "minRequests": 20, "inconclusiveLimit": 5}]}}
CANARY = {"strategy": "canary", "steps": [{"setWeight": 20}, {"analysis": {"templates": ["errors"]}},
                                          {"setWeight": 50}, {"pause": {"duration": "2s"}}],
          "analysis": {"templates": ["errors"], "startingStep": 1}, "scaleDownDelay": "3s"}
BLUE_GREEN = {"strategy": "blueGreen", "previewHeader": {"x-preview": "1"}, "scaleDownDelay": "60s"}


class Failing:
    """An upstream that answers 500 to every twentieth request: exactly 5 %."""

    def __init__(self, name: str, every: int = 20) -> None:
        self.name, self.every, self.count = name, every, 0

    async def handle(self, request: web.Request) -> web.Response:
        self.count += 1
        status = 500 if self.every and self.count % self.every == 0 else 200
        return web.Response(status=status, text=self.name, headers={"X-Version": self.name})


@pytest.fixture
async def failing() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(name: str, every: int = 20) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", Failing(name, every).handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


class Load:
    """Sticky users through every proxy, keep-alive and new connections, about 200 requests a second."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.seen: list[tuple[float, str, str, int]] = []  # (time, user, version, status)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._client(port, keep)) for port in self.ports for keep in (True, False)]

    async def _client(self, port: int, keep_alive: bool) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=not keep_alive)) as session:
            for i in range(20_000):  # bounded: 100 s at this pace
                if self.stop.is_set():
                    return
                user = USERS[(i * 7 + port + (0 if keep_alive else 3)) % len(USERS)]
                try:
                    async with session.get(f"http://127.0.0.1:{port}/", headers={"X-User": user}) as response:
                        await response.read()
                        self.seen.append((time.monotonic(), user, response.headers.get("X-Version", "?"),
                                          response.status))
                except aiohttp.ClientError as exc:
                    self.seen.append((time.monotonic(), user, "?", -1))
                    print("client error", exc)
                await asyncio.sleep(0.02)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    def failed(self, version: str | None = None) -> list[tuple[float, str, str, int]]:
        return [s for s in self.seen if s[3] != 200 and (version is None or s[2] == version)]


async def rollout(setup: Setup, session: aiohttp.ClientSession, service: str = "shop") -> dict[str, Any]:
    _, body = await setup.controller.call(session, "GET", f"/v1/rollouts/{service}")
    return dict(body)


async def phase_is(setup: Setup, session: aiohttp.ClientSession, *phases: str) -> bool:
    return (await rollout(setup, session))["phase"] in phases


async def live(setup: Setup, session: aiohttp.ClientSession, count: int) -> bool:
    _, listing = await setup.controller.call(session, "GET", "/v1/proxies")
    return sum(1 for p in listing["proxies"] if p["live"]) == count


async def test_a_healthy_canary_completes_and_a_failing_one_is_rolled_back(upstreams: Any, failing: Any,
                                                                           tmp_path: Path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    setup = Setup(tmp_path, v1.address, v2.address, {"v1": 100, "v2": 0}, templates=TEMPLATES,
                  rollouts={"shop": CANARY})
    try:
        edges = [setup.start_proxy(f"edge-{i}") for i in range(2)]
        async with aiohttp.ClientSession() as session:
            await until(lambda: live(setup, session, 2))
            load = Load([edge.port for edge in edges])
            load.start()
            await asyncio.sleep(1)

            status, started = await setup.controller.call(session, "POST", "/v1/rollouts",
                                                          {"service": "shop", "to": "v2"})
            assert status == 201, started
            assert started["id"] == "shop-1" and started["stable"] == "v1" and started["phase"] in (
                "Pending", "Progressing")
            await until(lambda: phase_is(setup, session, "Succeeded", "Aborted"), 60)
            done = await rollout(setup, session)
            assert done["phase"] == "Succeeded", done
            _, history = await setup.controller.call(session, "GET", "/v1/rollouts/shop/history")
            whys = [t["why"] for t in history["history"]]
            assert any("analysis errors: every metric passed" in why for why in whys), whys
            assert any("setWeight 50% served by every live proxy" in why for why in whys), whys
            # Only v2 answers now, on both proxies.
            await asyncio.sleep(1)
            recent = [s for s in load.seen if s[0] > time.monotonic() - 0.8]
            assert recent and {s[2] for s in recent} == {"v2"}
            assert load.failed() == []
            # scaleDownDelay (3 s) later, v1 has left the split.
            await until(lambda: _split_is(setup, session, {"v2": 100.0}), 15)

            # v3 fails 5 %: added by the start, aborted by analysis, every user back on v2.
            v3 = await failing("v3")
            status, started = await setup.controller.call(session, "POST", "/v1/rollouts",
                                                          {"service": "shop", "to": "v3", "endpoints": [v3]})
            assert status == 201 and started["id"] == "shop-2" and started["stable"] == "v2", started
            await until(lambda: phase_is(setup, session, "Aborted", "Succeeded"), 60)
            aborted = await rollout(setup, session)
            assert aborted["phase"] == "Aborted", aborted
            assert "success-rate failed" in aborted["reason"] and "canary success_rate" in aborted["reason"]
            _, history = await setup.controller.call(session, "GET", "/v1/rollouts/shop/history")
            weighted = next(t["unix"] for t in history["history"] if "setWeight 20% served" in t["why"])
            assert history["history"][-1]["unix"] - weighted <= 2 * 2.0 + 1.0  # within 2 analysis intervals
            aborted_at = time.monotonic()  # answered: every live proxy serves the abort
            await asyncio.sleep(1.5)
            on_v3 = {s[1] for s in load.seen if s[2] == "v3"}
            assert on_v3, "some users reached the canary"
            after = [s for s in load.seen if s[0] > aborted_at + 0.5]
            assert after and {s[2] for s in after} == {"v2"}
            for edge in edges:  # every user who was on the canary is back on stable, on every proxy
                for user in sorted(on_v3):
                    async with session.get(f"http://127.0.0.1:{edge.port}/", headers={"X-User": user}) as r:
                        assert r.status == 200 and r.headers["X-Version"] == "v2", user
            _, history = await setup.controller.call(session, "GET", "/v1/rollouts/shop/history")
            print("\n".join(f"{t['at']} {t['who']:<10} {t['phase']:<11} {t['step']} {t['why']}"
                            for t in history["history"]))
            await load.finish()
        assert load.failed("v1") == [] and load.failed("v2") == []  # stable never failed a request
        assert {s[3] for s in load.failed()} <= {500}  # the canary's own 5 %, nothing else
        assert all(s[2] == "v3" for s in load.failed())
    finally:
        setup.stop()


async def _split_is(setup: Setup, session: aiohttp.ClientSession, weights: dict[str, float]) -> bool:
    return bool((await rollout(setup, session))["route"]["weights"] == weights and
                (await rollout(setup, session))["applied"])


async def test_blue_green_promotes_under_load_and_undo_restores_blue(upstreams: Any, tmp_path: Path) -> None:
    blue, green = await upstreams("v1"), await upstreams("v2")
    setup = Setup(tmp_path, blue.address, green.address, {"v1": 100, "v2": 0}, rollouts={"shop": BLUE_GREEN})
    try:
        edges = [setup.start_proxy(f"edge-{i}") for i in range(2)]
        async with aiohttp.ClientSession() as session:
            await until(lambda: live(setup, session, 2))
            load = Load([edge.port for edge in edges])
            load.start()
            status, started = await setup.controller.call(session, "POST", "/v1/rollouts",
                                                          {"service": "shop", "to": "v2"})
            assert status == 201, started
            await until(lambda: phase_is(setup, session, "Paused"), 20)  # preview served, waiting for promotion
            for edge in edges:  # the preview header reaches green; everyone else stays on blue
                async with session.get(f"http://127.0.0.1:{edge.port}/", headers={"x-preview": "1"}) as r:
                    assert r.headers["X-Version"] == "v2"
            assert {s[2] for s in load.seen} == {"v1"}
            # Illegal commands answer 409 and change nothing.
            status, body = await setup.controller.call(session, "POST", "/v1/rollouts/shop/undo")
            assert status == 409 and "Paused" in body["error"]
            status, body = await setup.controller.call(session, "POST", "/v1/rollouts/shop/promote")
            assert status == 200, body
            await until(lambda: phase_is(setup, session, "Succeeded"), 20)
            promoted_at = time.monotonic()
            await asyncio.sleep(1)
            assert {s[2] for s in load.seen if s[0] > promoted_at + 0.3} == {"v2"}
            status, body = await setup.controller.call(session, "POST", "/v1/rollouts/shop/undo")
            assert status == 200 and body["phase"] == "Aborted", body
            undone_at = time.monotonic()  # the answer came once every live proxy served blue
            await asyncio.sleep(1)
            assert {s[2] for s in load.seen if s[0] > undone_at + 0.1} == {"v1"}
            # While a rollout owns the rules, hand edits are refused; once it ended, they work again.
            status, body = await setup.controller.call(session, "POST", "/v1/rollouts/shop/retry")
            assert status == 200
            status, body = await setup.controller.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                                       {"weights": {"v1": 50, "v2": 50}})
            assert status == 409 and "shop-1" in body["error"]
            await setup.controller.call(session, "POST", "/v1/rollouts/shop/abort")
            status, body = await setup.controller.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                                       {"weights": {"v1": 100, "v2": 0}})
            assert status == 200, body
            await load.finish()
        assert load.failed() == []
    finally:
        setup.stop()


KILL_SPEC = {"strategy": "canary", "steps": [
    {"setWeight": 10}, {"analysis": {"metrics": [{"name": "ok", "condition": "success_rate >= 0.9", "interval": 1,
                                                  "count": 1, "minRequests": 3, "inconclusiveLimit": 50}]}},
    {"setWeight": 30}, {"pause": {"duration": "3s"}}, {"setWeight": 60}, {"pause": {}}], "scaleDownDelay": 1}


async def test_kill_9_at_random_moments_of_a_rollout_resumes_it_consistently(upstreams: Any, tmp_path: Path) -> None:
    """20 kill -9s of the controller at random moments while rollouts run, commands among them. After
    each restart the state file is whole, the rollout is where it was (never a step back), a pause
    keeps its deadline, every answered command is in force, an aborted rollout stays aborted."""
    import json
    import os
    import random
    import signal

    from .test_controller import Controller

    rng = random.Random(20261202)
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    setup = Setup(tmp_path, v1.address, v2.address, {"v1": 100, "v2": 0}, rollouts={"shop": KILL_SPEC})
    state_file = tmp_path / "controller.state.json"
    try:
        edge = setup.start_proxy("edge-0")
        async with aiohttp.ClientSession() as session:
            await until(lambda: live(setup, session, 1))
            load = Load([edge.port])
            load.start()
            versions = ["v1", "v2"]
            status, body = await setup.controller.call(session, "POST", "/v1/rollouts", {"service": "shop", "to": "v2"})
            assert status == 201, body
            ended = {"Succeeded", "Aborted"}
            for _round in range(20):
                await asyncio.sleep(rng.uniform(0.5, 4.0))
                _, before = await setup.controller.call(session, "GET", "/v1/rollouts/shop")
                expect_phase = None
                choice = rng.random()
                if before["phase"] == "Paused" and choice < 0.5:
                    status, after = await setup.controller.call(session, "POST", "/v1/rollouts/shop/promote")
                    assert status == 200, after
                    before, expect_phase = after, None
                elif before["phase"] == "Progressing" and choice < 0.1:
                    status, after = await setup.controller.call(session, "POST", "/v1/rollouts/shop/abort")
                    assert status == 200, after
                    before, expect_phase = after, "Aborted"
                elif before["phase"] in ended:
                    stable = before["canary"] if before["phase"] == "Succeeded" else before["stable"]
                    target = versions[1 - versions.index(stable)]
                    status, after = await setup.controller.call(session, "POST", "/v1/rollouts",
                                                                {"service": "shop", "to": target})
                    assert status == 201, after
                    before, expect_phase = after, None
                os.kill(setup.controller.process.pid, signal.SIGKILL)
                setup.controller.process.wait(10)
                saved = json.loads(state_file.read_text())  # whole, valid JSON
                kept = saved["rollouts"]["rollouts"]["shop"]
                setup.controller.stop()
                setup.controller = Controller(tmp_path / "controller.yaml")
                _, now = await setup.controller.call(session, "GET", "/v1/rollouts/shop")
                print(_round, before["id"], before["phase"], before["step"], "->", now["phase"], now["step"])
                assert now["id"] == before["id"] == kept["id"]
                assert now["step"] >= before["step"] or now["phase"] in ended, (before, now)
                if expect_phase is not None or before["phase"] == "Aborted":
                    assert now["phase"] == "Aborted" and kept["phase"] == "Aborted"  # never resumes
                if kept["pause_until"] is not None and now["step"] == kept["step"]:
                    _, again = await setup.controller.call(session, "GET", "/v1/rollouts/shop")
                    assert again.get("pause_remaining") is None or \
                        abs(kept["pause_until"] - time.time() - again["pause_remaining"]) < 1.5
            await load.finish()
        assert load.failed() == []  # twenty controller deaths, and no request failed
        assert {s[2] for s in load.seen} == {"v1", "v2"}
    finally:
        setup.stop()
