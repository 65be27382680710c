"""Rollout analysis from outside sources and the rollout's webhooks, against real servers on 127.0.0.1:
Debian's Prometheus (started here, scraping the managed proxy's /metrics), a local HTTP server answering
JSON for the web source, webhook receivers recording what they were told, and a gate that says no
before it says yes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from .test_managed import Setup, free_port, until
from .test_rollouts import Load, failing, live, phase_is, rollout  # noqa: F401 - failing is a fixture

ERROR_RATIO = ('sum(rate(turnout_requests_total{service="shop",version="%s",code_class="5xx"}[5s])) / '
               'sum(rate(turnout_requests_total{service="shop",version="%s"}[5s]))')


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Start a real Prometheus scraping the given admin API every second; yields a starter."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is needed (make test installs it: apt-get install prometheus)")
    started: list[subprocess.Popen[bytes]] = []

    def start(target: str, token_file: Path) -> str:
        port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "turnout", "metrics_path": "/metrics",
                                      "authorization": {"credentials_file": str(token_file)},
                                      "static_configs": [{"targets": [target]}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - lives as long as the process
        started.append(subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


class Receiver:
    """A webhook receiver: records every POST; ``answers`` are the statuses it gives, in turn."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.answers = answers or [200]

    async def handle(self, request: web.Request) -> web.Response:
        self.events.append(await request.json())
        status = self.answers[min(len(self.events), len(self.answers)) - 1]
        return web.json_response({"ok": status == 200}, status=status)


@pytest.fixture
async def server() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(routes: dict[str, Any]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        started = TestServer(app, host="127.0.0.1")
        await started.start_server()
        servers.append(started)
        return f"http://127.0.0.1:{started.port}"

    yield start
    for each in servers:
        await each.close()


def metric(name: str, source: dict[str, Any], condition: str) -> dict[str, Any]:
    return {"name": name, "source": source, "condition": condition, "interval": "2s", "count": 2,
            "inconclusiveLimit": 10}


async def test_prometheus_source_judges_the_canary_from_a_real_prometheus(
        upstreams: Any, failing: Any, prometheus: Any, tmp_path: Path) -> None:  # noqa: F811
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    setup = Setup(tmp_path, v1.address, v2.address, {"v1": 100, "v2": 0})
    try:
        edge = setup.start_proxy("edge-0")
        admin = edge.admin_url()
        address = prometheus(admin.removeprefix("http://"), edge.config_path.parent / "admin.token")
        async with aiohttp.ClientSession() as session:
            await until(lambda: live(setup, session, 1))
            load = Load([edge.port])
            load.start()

            async def scraped() -> bool:
                try:
                    async with session.get(f"{address}/api/v1/query", params={"query": "turnout_requests_total"}) as r:
                        return bool((await r.json())["data"]["result"])
                except aiohttp.ClientError:
                    return False
            await until(scraped, 30)

            def spec(version: str) -> dict[str, Any]:
                source = {"prometheus": {"address": address, "query": ERROR_RATIO % (version, version)}}
                return {"steps": [{"setWeight": 50}, {"analysis": {"metrics": [
                    metric("errors", source, "value <= 0.02")]}}], "scaleDownDelay": 1}

            status, body = await setup.controller.call(session, "POST", "/v1/rollouts",
                                                       {"service": "shop", "to": "v2", "spec": spec("v2")})
            assert status == 201, body
            await until(lambda: phase_is(setup, session, "Succeeded", "Aborted"), 45)
            _, history = await setup.controller.call(session, "GET", "/v1/rollouts/shop/history")
            assert (await rollout(setup, session))["phase"] == "Succeeded", history
            assert any("every metric passed" in t["why"] for t in history["history"])

            v3 = await failing("v3", every=4)  # 25 % errors
            status, body = await setup.controller.call(session, "POST", "/v1/rollouts", {
                "service": "shop", "to": "v3", "endpoints": [v3], "spec": spec("v3")})
            assert status == 201, body
            await until(lambda: phase_is(setup, session, "Succeeded", "Aborted"), 45)
            done = await rollout(setup, session)
            assert done["phase"] == "Aborted" and "errors failed" in done["reason"], done
            assert "prometheus value" in done["reason"] and "> 0.02" in done["reason"]
            await load.finish()
    finally:
        setup.stop()


async def test_web_source_webhooks_and_a_gate(upstreams: Any, server: Any, tmp_path: Path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    hooks, broken, gate = Receiver(), Receiver([500]), Receiver([503, 200])
    reading = {"value": 0.001}

    async def numbers(request: web.Request) -> web.Response:
        return web.json_response({"data": {"errors": [reading["value"]]}})

    base = await server({"/numbers": numbers, "/hook": hooks.handle, "/broken": broken.handle,
                         "/gate": gate.handle})
    web_metric = metric("web-errors", {"web": {"url": f"{base}/numbers", "field": "data.errors.0"}}, "value < 0.01")
    spec = {"steps": [{"webhook": {"url": f"{base}/gate", "retries": 3, "interval": "1s"}}, {"setWeight": 30},
                      {"analysis": {"metrics": [web_metric]}}],
            "webhooks": [f"{base}/hook", f"{base}/broken"], "scaleDownDelay": 1}
    setup = Setup(tmp_path, v1.address, v2.address, {"v1": 100, "v2": 0}, rollouts={"shop": spec})
    try:
        edge = setup.start_proxy("edge-0")
        async with aiohttp.ClientSession() as session:
            await until(lambda: live(setup, session, 1))
            status, body = await setup.controller.call(session, "POST", "/v1/rollouts", {"service": "shop", "to": "v2"})
            assert status == 201, body
            await until(lambda: phase_is(setup, session, "Succeeded", "Aborted"), 30)
            _, history = await setup.controller.call(session, "GET", "/v1/rollouts/shop/history")
            assert (await rollout(setup, session))["phase"] == "Succeeded", history
            whys = [t["why"] for t in history["history"]]
            assert any("webhook" in why and "passed: HTTP 200" in why for why in whys), whys
            assert len(gate.events) == 2 and gate.events[0]["kind"] == "gate"  # a 503, then a 200
            await until(lambda: _told(hooks, "Succeeded"))
            assert [e["phase"] for e in hooks.events] == ["Progressing", "Succeeded"]
            assert hooks.events[-1]["rollout"] == "shop-1" and hooks.events[-1]["canary"] == "v2"
            assert len(broken.events) >= 2  # retried, and never in the way

            reading["value"] = 0.5  # the web source now says 50 % errors
            started = time.monotonic()
            status, body = await setup.controller.call(session, "POST", "/v1/rollouts", {"service": "shop", "to": "v1"})
            assert status == 201, body
            await until(lambda: phase_is(setup, session, "Succeeded", "Aborted"), 30)
            done = await rollout(setup, session)
            assert done["phase"] == "Aborted" and "web value 0.5 >= 0.01" in done["reason"], done
            assert time.monotonic() - started < 20
            await until(lambda: _told(hooks, "Aborted"))
            async with session.get(f"http://127.0.0.1:{edge.port}/", headers={"X-User": "x"}) as r:
                assert r.headers["X-Version"] == "v2"  # the stable of that rollout
    finally:
        setup.stop()


async def _told(receiver: Receiver, phase: str) -> bool:
    await asyncio.sleep(0)
    return any(e["phase"] == phase for e in receiver.events)
