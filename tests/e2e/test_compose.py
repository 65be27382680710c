"""The docker-compose examples (``examples/compose``), brought up with Debian's docker-compose on the
real engine with Turnout's image (built offline): the split is seen from outside, the edge setup's
controller completes a ``turnout deploy`` of a new image, a stopped version leaves the routing, and
``docker-compose down`` takes it all down."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from ..dockerengine import Engine, docker_engine, turnout_image  # noqa: F401 - the fixtures
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

    def containers(self) -> list[object]:
        label = f"com.docker.compose.project={self.command[-1]}"
        return list(self.engine.client.containers.list(all=True, filters={"label": label}))


async def test_the_sidecar_example_discovers_and_splits(docker_engine: Engine, turnout_image: str) -> None:  # noqa: F811
    compose = Compose("sidecar", docker_engine, turnout_image)
    up = await asyncio.to_thread(compose, "up", "-d")
    assert up.returncode == 0, up.stderr
    try:
        async def both() -> bool:
            return set(await _versions(8080, 20)) == {"v1", "v2"}
        await until(both, 60)
        split = await _versions(8080, 400)
        assert set(split) == {"v1", "v2"} and 230 < split["v1"] < 370, split  # the labels say 3:1
        stopped = await asyncio.to_thread(compose, "stop", "app-v2")
        assert stopped.returncode == 0, stopped.stderr

        async def only_v1() -> bool:
            return set(await _versions(8080, 20)) == {"v1"}
        await until(only_v1, 30)
    finally:
        down = await asyncio.to_thread(compose, "down", "-v", "--timeout", "5")
    assert down.returncode == 0 and compose.containers() == []


async def test_the_edge_example_follows_its_controller_and_deploys(docker_engine: Engine,  # noqa: F811
                                                                   turnout_image: str) -> None:  # noqa: F811
    compose = Compose("edge", docker_engine, turnout_image)
    app = docker_engine.app_image("edge-app:3", "v3")
    up = await asyncio.to_thread(compose, "up", "-d")
    assert up.returncode == 0, up.stderr
    try:
        async def both() -> bool:
            return set(await _versions(8081, 20)) == {"v1", "v2"}
        await until(both, 60)
        headers = {"Authorization": "Bearer s3cret"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post("http://127.0.0.1:9911/v1/deploys",
                                    json={"service": "app", "image": app, "version": "v3"}) as response:
                assert response.status == 201, await response.text()

            async def deployed() -> bool:
                async with session.get("http://127.0.0.1:9911/v1/deploys/app") as response:
                    return (await response.json())["phase"] in ("Succeeded", "Aborted", "Failed")
            await until(deployed, 90)
            async with session.get("http://127.0.0.1:9911/v1/deploys/app") as response:
                done = await response.json()
        assert done["phase"] == "Succeeded", done
        assert set(await _versions(8081, 20)) == {"v3"}  # through the edge proxy, which has no Docker access
    finally:
        down = await asyncio.to_thread(compose, "down", "-v", "--timeout", "5")
        docker_engine.cleanup()  # the containers the deploy started are Turnout's, not compose's
    assert down.returncode == 0 and compose.containers() == []
