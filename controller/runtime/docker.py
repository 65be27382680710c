"""The runtime port on a plain Docker engine, through the Docker SDK (synchronous: its calls run in
threads). Containers are made with ``init`` (a signal reaches the app) and host networking, and are never
pulled unless asked."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping
from typing import Any

import aiohttp
import docker
import docker.errors
import requests.exceptions

from . import Instance, RuntimeFailure

__all__ = ["DockerRuntime"]

STOP_TIMEOUT = 10  # seconds a stopped container has to exit before it is killed
ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


class DockerRuntime:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client: docker.DockerClient | None = None  # made at the first call

    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.url, timeout=30)
        return self._client

    async def _call(self, work: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(work, *args, **kwargs)
        except ERRORS as exc:
            raise RuntimeFailure(f"the Docker engine at {self.url} failed: {exc}") from None

    async def has_image(self, image: str) -> bool:
        def get() -> bool:
            try:
                self.client().images.get(image)
            except docker.errors.ImageNotFound:
                return False
            return True
        return bool(await self._call(get))

    async def pull(self, image: str) -> None:
        try:
            await asyncio.to_thread(lambda: self.client().images.pull(image))
        except ERRORS as exc:
            raise RuntimeFailure(f"cannot pull {image}: {exc}", "image") from None

    async def run(self, image: str, name: str, labels: Mapping[str, str]) -> Instance:
        port = _free_port()
        labels = {**labels, "turnout.port": str(port)}
        container = await self._call(lambda: self.client().containers.run(
            image, detach=True, init=True, network_mode="host", environment={"PORT": str(port)}, labels=labels,
            name=f"{name}-{port}"))
        return _instance(container)

    async def start(self, container_id: str) -> None:
        await self._call(lambda: self.client().containers.get(container_id).start())

    async def healthy(self, instance: Instance, path: str) -> bool:
        def inspect() -> Any:
            try:
                return self.client().containers.get(instance.id)
            except docker.errors.NotFound:
                return None
        container = await self._call(inspect)
        if container is None:
            return False
        health = ((container.attrs.get("State") or {}).get("Health") or {}).get("Status")
        if health is not None:
            return bool(health == "healthy")
        if container.status != "running":
            return False
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session, \
                    session.get(f"http://127.0.0.1:{instance.port}{path}") as response:
                return response.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def remove(self, container_id: str) -> None:
        def remove() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                container = self.client().containers.get(container_id)
                container.stop(timeout=STOP_TIMEOUT)
                container.remove(force=True)
        await self._call(remove)

    async def list(self, labels: Mapping[str, str], include_stopped: bool = False) -> list[Instance]:
        wanted = [f"{key}={value}" for key, value in labels.items()]
        found = await self._call(lambda: self.client().containers.list(all=include_stopped,
                                                                       filters={"label": wanted}))
        return [_instance(c) for c in found]


def _instance(container: Any) -> Instance:
    image = ((container.attrs or {}).get("Config") or {}).get("Image") or ""
    return Instance(str(container.id), str(container.name), str(container.status), dict(container.labels or {}),
                    str(image))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
