"""Turnout as a sidecar in docker-compose: the shipped ``config/compose`` setup, brought up with
Debian's docker-compose on the real engine (Turnout's image, built offline), splits between the app's
versions by their labels, and follows a version that goes away."""

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

COMPOSE = Path(__file__).resolve().parents[2] / "config" / "compose" / "docker-compose.yml"


async def _versions(count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            try:
                async with session.get("http://127.0.0.1:8080/", headers={"X-User-Id": f"u{i}"}) as response:
                    seen[response.headers.get("X-Demo-Version", str(response.status))] += 1
            except aiohttp.ClientError:
                seen["down"] += 1
    return seen


async def test_the_compose_setup_discovers_and_splits(docker_engine: Engine, turnout_image: str) -> None:  # noqa: F811
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("Debian's docker-compose is needed (make test installs it)")
    env = {**os.environ, "DOCKER_HOST": docker_engine.url, "TURNOUT_IMAGE": turnout_image,
           "DOCKER_SOCKET": docker_engine.url.removeprefix("unix://")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([compose, "-f", str(COMPOSE), "-p", "turnout-test", *args], env=env, text=True,
                              capture_output=True, timeout=120)

    up = await asyncio.to_thread(run, "up", "-d")
    assert up.returncode == 0, up.stderr
    try:
        async def both() -> bool:
            return set(await _versions(20)) == {"v1", "v2"}
        await until(both, 60)
        split = await _versions(400)
        assert set(split) == {"v1", "v2"} and 230 < split["v1"] < 370, split  # labels say 3:1
        stopped = await asyncio.to_thread(run, "stop", "app-v2")
        assert stopped.returncode == 0, stopped.stderr

        async def only_v1() -> bool:
            return set(await _versions(20)) == {"v1"}
        await until(only_v1, 30)
    finally:
        await asyncio.to_thread(run, "down", "-v", "--timeout", "5")
