"""The docker-compose examples (``examples/compose``), brought up with Debian's docker-compose on the
real engine with Turnout's image (built offline by ``make image``), as their READMEs run them: every
container healthy by the image's health check (Turnout's at the admin address its config gives it), the
split seen from outside, ``turnout`` run inside the containers (status, proxies, and the edge setup's
``turnout deploy`` of a new image, completed), a stopped version leaving the routing, and
``docker-compose down`` taking it all down with no volume left behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ..dockerengine import Engine, last_check, wait_healthy
from ..integration.test_managed import until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "compose"


async def _versions(port: int, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            try:
                async with session.get(f"http://127.0.0.1:{port}/", headers={"X-User-Id": f"u{i}"}) as response:
                    body = (await response.text()).strip()
                    seen[response.headers.get("X-Demo-Version", body if response.status == 200 else
                                              str(response.status))] += 1
            except aiohttp.ClientError:
                seen["down"] += 1
    return seen


class Compose:
    def __init__(self, example: str, engine: Engine, image: str) -> None:
        compose = shutil.which("docker-compose")
        if compose is None:
            pytest.fail("Debian's docker-compose is needed (make test installs it)")
        self.command = [compose, "-f", str(EXAMPLES / example / "docker-compose.yml"), "-p", f"turnout-{example}"]
        self.env = {**os.environ, "DOCKER_HOST": engine.url, "TURNOUT_IMAGE": image,
                    "DOCKER_SOCKET": engine.url.removeprefix("unix://"), "TURNOUT_CONTROLLER_TOKEN": "s3cret"}
        self.engine = engine

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.command, *args], env=self.env, text=True, capture_output=True, timeout=120)

    def containers(self) -> list[Any]:
        label = f"com.docker.compose.project={self.command[-1]}"
        return list(self.engine.client.containers.list(all=True, filters={"label": label}))

    def container(self, service: str) -> Any:
        return next(c for c in self.containers() if c.labels["com.docker.compose.service"] == service)

    async def turnout(self, service: str, *args: str) -> str:
        """``docker-compose exec SERVICE turnout ARGS…``, as the READMEs run it; its output."""
        done = await asyncio.to_thread(self, "exec", "-T", service, "turnout", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def _volumes(engine: Engine) -> set[str]:
    return {volume.name for volume in engine.client.volumes.list()}


async def test_the_sidecar_example_discovers_and_splits(docker_engine: Engine, turnout_image: str) -> None:
    compose = Compose("sidecar", docker_engine, turnout_image)
    volumes = _volumes(docker_engine)
    up = await asyncio.to_thread(compose, "up", "-d")
    assert up.returncode == 0, up.stderr
    try:
        async def both() -> bool:
            return set(await _versions(8080, 20)) == {"v1", "v2"}
        await until(both, 60)
        split = await _versions(8080, 400)
        assert set(split) == {"v1", "v2"} and 230 < split["v1"] < 370, split  # the labels say 3:1
        await wait_healthy(compose.containers())
        assert last_check(compose.container("turnout")).startswith("GET http://127.0.0.1:9901/ready: 200")
        assert "service app" in await compose.turnout("turnout", "status")
        stopped = await asyncio.to_thread(compose, "stop", "app-v2")
        assert stopped.returncode == 0, stopped.stderr

        async def only_v1() -> bool:
            return set(await _versions(8080, 20)) == {"v1"}
        await until(only_v1, 30)
    finally:
        down = await asyncio.to_thread(compose, "down", "--timeout", "5")
    assert down.returncode == 0 and compose.containers() == []
    assert _volumes(docker_engine) == volumes  # no anonymous volume left behind


async def test_the_edge_example_follows_its_controller_and_deploys(docker_engine: Engine,
                                                                   turnout_image: str) -> None:
    compose = Compose("edge", docker_engine, turnout_image)
    app = docker_engine.app_image("edge-app:3", "v3")
    volumes = _volumes(docker_engine)
    up = await asyncio.to_thread(compose, "up", "-d")
    assert up.returncode == 0, up.stderr
    try:
        async def both() -> bool:
            return set(await _versions(8081, 20)) == {"v1", "v2"}
        await until(both, 60)
        await wait_healthy(compose.containers())
        # The edge's check asks its own admin API, on 9902 (not a 9901 some other proxy might answer).
        assert last_check(compose.container("edge")).startswith("GET http://127.0.0.1:9902/ready: 200")
        assert last_check(compose.container("controller")).startswith("GET http://127.0.0.1:9911/ready: 200")
        assert "edge-1" in await compose.turnout("controller", "proxies")
        assert "service app" in await compose.turnout("edge", "status")
        started = await compose.turnout("controller", "deploy", "app", "--image", app, "--version", "v3")
        assert started.startswith("deploy "), started
        headers = {"Authorization": "Bearer s3cret"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async def deployed() -> bool:
                async with session.get("http://127.0.0.1:9911/v1/deploys/app") as response:
                    return (await response.json())["phase"] in ("Succeeded", "Aborted", "Failed")
            await until(deployed, 90)
            async with session.get("http://127.0.0.1:9911/v1/deploys/app") as response:
                done = await response.json()
        assert done["phase"] == "Succeeded", done
        assert set(await _versions(8081, 20)) == {"v3"}  # through the edge proxy, which has no Docker access
    finally:
        down = await asyncio.to_thread(compose, "down", "--timeout", "5")
        docker_engine.cleanup()  # the containers the deploy started are Turnout's, not compose's
    assert down.returncode == 0 and compose.containers() == []
    assert _volumes(docker_engine) == volumes  # no anonymous volume left behind
