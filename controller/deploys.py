"""Deploys: immutable infrastructure on a Docker engine. A deploy starts new containers of an image as
a new version of a service, waits until each is healthy, lets the rollout move the traffic (canary or
blue/green, ``rollouts.Book``), then retires what lost: on success the old version's containers are
stopped and removed once the rollout has taken the old version out of the routing (after its
``scaleDownDelay``, so ``undo`` is instant until then); on abort the new containers are removed and
the old ones were never touched.

    Creating -> Releasing -> CleaningUp -> Succeeded | Aborted        (Failed: never got healthy)
    Rolling -> Succeeded                                               (strategy rolling)

``rolling`` replaces the containers of an existing version one at a time (max surge 1, max
unavailable 0): a new container is started and must be healthy and served by every live proxy before
the next old one is retired; that one is marked draining first (it takes no new requests, those in
flight finish), and only then stopped and removed. No version changes, so no rollout runs.

Every container a deploy starts carries its id (label ``turnout.deploy``), and the deploy's state is
kept in the controller's state file, so a controller restarted mid-deploy finds the containers it
already started (it never starts them twice) and goes on from its phase. The new containers get the
service's labels, so discovery (``providers.docker``) is what makes them endpoints.

Containers run with host networking on 127.0.0.1: each replica gets its own port, chosen free, given
in the ``PORT`` environment variable and the ``turnout.port`` label. The Docker SDK is synchronous: its
calls run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import aiohttp
import docker
import docker.errors
import requests.exceptions

from turnout.core.overlay import ChangeError

from .rollouts import Book

__all__ = ["Deploy", "Deploys"]

log = logging.getLogger("turnout")

HEALTHY_WITHIN = 60.0  # seconds a new container has to pass its health check
DRAIN_FOR = 2.0  # seconds a retiring container keeps its requests in flight, once every proxy drains it
STOP_TIMEOUT = 10  # seconds a stopped container has to exit before it is killed


@dataclass(frozen=True, slots=True)
class Deploy:
    id: str  # the rollout's id
    service: str
    version: str
    image: str
    replicas: int
    strategy: str
    health_path: str
    phase: str = "Creating"
    reason: str = ""
    replaced: tuple[str, ...] = ()  # the old version's containers, found at the start (to retire on success)
    history: tuple[tuple[float, str], ...] = field(default=())

    @property
    def active(self) -> bool:
        return self.phase in ("Creating", "Releasing", "CleaningUp", "Rolling")


Errors = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


class Deploys:
    def __init__(self, book: Book, url: str, clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self.url = url
        self.clock = clock
        self.deploys: dict[str, Deploy] = {}  # by service: the latest
        self.client: docker.DockerClient | None = None  # made at the first deploy
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.draining: set[str] = set()  # ids of containers being retired by a rolling deploy
        self.refresh: Callable[[], None] = lambda: None  # the provider translates its last listing again

    # -- persistence: kept in the rollouts' part of the state file

    def saved(self) -> dict[str, Any]:
        return {service: {**asdict(d), "replaced": list(d.replaced), "history": [list(h) for h in d.history]}
                for service, d in self.deploys.items()}

    def restore(self, saved: dict[str, Any] | None) -> None:
        for service, data in (saved or {}).items():
            try:
                self.deploys[service] = Deploy(**{**data, "replaced": tuple(data.get("replaced", ())),
                                                  "history": tuple(tuple(h) for h in data.get("history", ()))})
            except TypeError as exc:
                log.error("deploy of %s in the state file cannot be read (%s): left out", service, exc)

    def resume(self) -> None:
        """After a start: every deploy that was under way goes on from its phase."""
        for deploy in self.deploys.values():
            if deploy.active:
                self._run(deploy)

    # -- commands

    async def start(self, service: str, image: str, version: str, replicas: int, strategy: str,
                    pull: bool, who: str) -> Deploy:
        current = self.deploys.get(service)
        if current is not None and current.active:
            raise ChangeError(409, f"deploy {current.id} of {service} is {current.phase}", "service")
        if self.book.active(service):
            raise ChangeError(409, f"a rollout of {service} is running: let it end first", "service")
        if not 1 <= replicas <= 50:
            raise ChangeError(422, "replicas must be 1..50", "replicas")
        if strategy not in ("canary", "blueGreen", "rolling"):
            raise ChangeError(422, f"strategy must be canary, blueGreen or rolling, got {strategy!r}", "strategy")
        client = self._client()
        try:
            await asyncio.to_thread(client.images.get, image)
        except docker.errors.ImageNotFound:
            if not pull:
                raise ChangeError(422, f"image {image} is not on the engine; pull it first, or pass --pull",
                                  "image") from None
            try:
                await asyncio.to_thread(client.images.pull, image)
            except Errors as exc:
                raise ChangeError(502, f"cannot pull {image}: {exc}", "image") from None
        except Errors as exc:
            raise ChangeError(502, f"the Docker engine at {self.url} cannot be reached: {exc}", "image") from None
        old = await asyncio.to_thread(client.containers.list, filters={"label": f"turnout.service={service}"})
        rolling = strategy == "rolling"
        replaced = tuple(c.id for c in old if (c.labels.get("turnout.version") == version) == rolling)
        if rolling and not replaced:
            raise ChangeError(422, f"no running containers of {service}/{version} to replace; a new version is "
                              "deployed with --strategy canary or blueGreen", "version")
        number = self.book.numbers.get(service, 0) + 1  # the rollout's id (a rolling deploy has none: it takes it)
        if rolling:
            self.book.numbers[service] = number
        deploy = Deploy(f"{service}-{number}", service, version, image, len(replaced) if rolling else replicas,
                        strategy, self._health_path(service, version), "Rolling" if rolling else "Creating",
                        replaced=replaced,
                        history=((self.clock(), f"created by {who}: {image} as {version} ({strategy})"),))
        self._keep(deploy)
        self._run(deploy)
        return deploy

    def get(self, service: str) -> Deploy:
        found = self.deploys.get(service)
        if found is None:
            raise ChangeError(404, f"no deploy of {service!r}", "service")
        return found

    def view(self, deploy: Deploy) -> dict[str, Any]:
        view = {**asdict(deploy), "replaced": list(deploy.replaced),
                "history": [{"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)), "why": why}
                            for at, why in deploy.history]}
        rollout = self.book.rollouts.get(deploy.service)
        if rollout is not None and rollout.id == deploy.id:
            view["rollout"] = self.book.view(rollout)
        return view

    # -- the work

    def _client(self) -> docker.DockerClient:
        if self.client is None:
            self.client = docker.DockerClient(base_url=self.url, timeout=30)
        return self.client

    def _version(self, service: str, version: str) -> dict[str, Any] | None:
        """The version as the routing has it now (its endpoints, draining, health), or None."""
        versions = ((self.book.writer.desired.document().get("services") or {}).get(service) or {}) \
            .get("versions") or {}
        found = versions.get(version) if isinstance(versions, dict) else None
        if found is None:
            return None
        return found if isinstance(found, dict) else {"endpoints": list(found)}  # the list shorthand

    def _health_path(self, service: str, version: str) -> str:
        health = (self._version(service, version) or {}).get("health")
        return str(health.get("path", "/")) if isinstance(health, dict) else "/"

    def _keep(self, deploy: Deploy, note: str = "") -> Deploy:
        if note:
            deploy = replace(deploy, reason=note, history=(*deploy.history, (self.clock(), note))[-100:])
        self.deploys[deploy.service] = deploy
        self.book.extra["deploys"] = self.saved()
        try:
            self.book.persist_extra()
        except ChangeError as exc:  # the deploy goes on; its state is written with the next change
            log.error("deploy %s: %s", deploy.id, exc.message)
        return deploy

    def _run(self, deploy: Deploy) -> None:
        task = asyncio.get_running_loop().create_task(self._drive(deploy.service))
        self._tasks[deploy.service] = task

    async def _drive(self, service: str) -> None:
        try:
            while self.deploys[service].active:
                deploy = self.deploys[service]
                if deploy.phase == "Creating":
                    await self._create(deploy)
                elif deploy.phase == "Releasing":
                    await self._release(deploy)
                elif deploy.phase == "Rolling":
                    await self._roll(deploy)
                else:
                    await self._clean(deploy)
        except Errors as exc:
            self._keep(replace(self.deploys[service], phase="Failed"), f"the Docker engine failed: {exc}")
        except ChangeError as exc:
            self._keep(replace(self.deploys[service], phase="Failed"), exc.message)

    def _mine(self, deploy: Deploy) -> list[Any]:
        return list(self._client().containers.list(all=True, filters={"label": f"turnout.deploy={deploy.id}"}))

    async def _start_healthy(self, deploy: Deploy, count: int) -> bool:
        """Have ``count`` containers of the deploy (a restart finds the ones it started), each healthy.
        False (its unhealthy containers removed, the deploy Failed) if they do not get healthy in time."""
        mine = await asyncio.to_thread(self._mine, deploy)
        for _ in range(count - len(mine)):
            port = _free_port()
            labels = {"turnout.service": deploy.service, "turnout.version": deploy.version, "turnout.port": str(port),
                      "turnout.deploy": deploy.id, "turnout.rollout": deploy.id}
            if deploy.health_path != "/":
                labels["turnout.health.path"] = deploy.health_path
            await asyncio.to_thread(self._client().containers.run, deploy.image, detach=True, init=True,
                                    network_mode="host", environment={"PORT": str(port)}, labels=labels,
                                    name=f"{deploy.id}-{port}")
        mine = await asyncio.to_thread(self._mine, deploy)
        for container in mine:
            if container.status == "created":  # created when the controller died, never started
                await asyncio.to_thread(container.start)
        deadline = time.monotonic() + HEALTHY_WITHIN
        while not all(await asyncio.gather(*(self._healthy(c, deploy.health_path) for c in mine))):
            if time.monotonic() > deadline:
                sick = [c.id for c in mine if not await self._healthy(c, deploy.health_path)]
                await asyncio.to_thread(self._remove, sick)
                self._keep(replace(deploy, phase="Failed"), f"{deploy.image} did not get healthy within "
                                                            f"{HEALTHY_WITHIN:g}s: {len(sick)} unhealthy containers "
                                                            "removed, the old ones untouched")
                return False
            await asyncio.sleep(0.5)
            mine = await asyncio.to_thread(self._mine, deploy)
        return True

    async def _create(self, deploy: Deploy) -> None:
        """Start the replicas, wait until each is healthy, then start the rollout."""
        if not await self._start_healthy(deploy, deploy.replicas):
            return
        deploy = self._keep(deploy, f"{deploy.replicas} containers healthy")
        current = self.book.rollouts.get(deploy.service)
        if current is not None and current.id == deploy.id:  # started before a restart: go on with it
            self._keep(replace(deploy, phase="Releasing"), f"rollout {deploy.id} goes on")
            return
        await self._until_served(deploy, lambda endpoints, _: bool(endpoints))  # discovery made them endpoints
        spec: dict[str, Any] | None = {"strategy": deploy.strategy, "steps": [
            {"setWeight": 20}, {"pause": {"duration": "5s"}}, {"setWeight": 60}, {"pause": {"duration": "5s"}}]} \
            if deploy.strategy == "canary" else {"strategy": "blueGreen", "autoPromotionSeconds": 5}
        configured = self.book.specs.get(deploy.service)
        if isinstance(configured, dict) and configured.get("strategy", "canary") == deploy.strategy:
            spec = None  # the config's spec for the service, when it has the strategy asked for
        self.book.start(deploy.service, deploy.version, None, spec, f"deploy {deploy.id}")
        self._keep(replace(deploy, phase="Releasing"), f"rollout {deploy.id} started")

    async def _roll(self, deploy: Deploy) -> None:
        """One step of a rolling replacement: a new container first (surge), else retire an old one."""
        left = await asyncio.to_thread(self._existing, list(deploy.replaced))
        if not left:
            self._keep(replace(deploy, phase="Succeeded"), f"done: {len(deploy.replaced)} containers replaced, "
                                                           "one at a time")
            return
        mine = await asyncio.to_thread(self._mine, deploy)
        if len(mine) <= len(deploy.replaced) - len(left):
            if not await self._start_healthy(deploy, len(mine) + 1):
                return
            fresh = {c.labels.get("turnout.port") for c in await asyncio.to_thread(self._mine, deploy)}
            await self._until_served(deploy, lambda endpoints, _: all(
                any(e.endswith(f":{port}") for e in endpoints) for port in fresh))
            self._keep(deploy, f"{len(fresh)} new containers serving")
            return
        old = left[0]
        self.draining.add(old.id)
        self.refresh()
        address = f":{old.labels.get('turnout.port')}"
        await self._until_served(deploy, lambda _, draining: any(d.endswith(address) for d in draining))
        await asyncio.sleep(DRAIN_FOR)  # requests in flight on it finish; no new ones reach it
        await asyncio.to_thread(self._remove, [old.id])
        self.draining.discard(old.id)
        self._keep(deploy, f"retired container {old.name} after draining it")

    def _existing(self, ids: list[str]) -> list[Any]:
        found = []
        for container_id in ids:
            with contextlib.suppress(docker.errors.NotFound):
                found.append(self._client().containers.get(container_id))
        return found

    async def _until_served(self, deploy: Deploy, ready: Callable[[list[str], list[str]], bool]) -> None:
        """Until the routing shows ``ready(endpoints, draining)`` for the deploy's version and every live
        proxy serves that generation."""
        loop = asyncio.get_running_loop()
        for _ in range(300):
            entry = self._version(deploy.service, deploy.version) or {}
            if ready(list(entry.get("endpoints") or []), list(entry.get("draining") or [])) and \
                    not self.book.proxies.waiting_for(self.book.writer.generation, loop.time()):
                return
            await asyncio.sleep(0.1)
        raise ChangeError(504, f"the fleet did not take the change of {deploy.service}/{deploy.version} in time "
                          "(discovery: is providers.docker set on the controller?)", "proxies")

    async def _release(self, deploy: Deploy) -> None:
        rollout = self.book.rollouts.get(deploy.service)
        if rollout is None or rollout.id != deploy.id:
            self._keep(replace(deploy, phase="Failed"), "its rollout is gone")
            return
        if rollout.phase.value == "Succeeded" and rollout.retired:
            self._keep(replace(deploy, phase="CleaningUp"), f"{rollout.stable} left the routing: retiring it")
        elif rollout.phase.value == "Aborted":
            self.book.retire_canary(deploy.service, f"deploy {deploy.id}")
            self._keep(replace(deploy, phase="CleaningUp"), f"rollout aborted: removing {deploy.version}")
        else:
            await asyncio.sleep(0.5)

    async def _clean(self, deploy: Deploy) -> None:
        rollout = self.book.rollouts[deploy.service]
        if not self.book.served(deploy.service):
            await asyncio.sleep(0.3)  # the routing without the leaving version first, everywhere
            return
        if rollout.phase.value == "Succeeded":
            await asyncio.to_thread(self._remove, list(deploy.replaced))
            self._keep(replace(deploy, phase="Succeeded"), f"done: {len(deploy.replaced)} old containers removed")
        else:
            mine = await asyncio.to_thread(self._mine, deploy)
            await asyncio.to_thread(self._remove, [c.id for c in mine])
            self._keep(replace(deploy, phase="Aborted"), f"rolled back: {len(mine)} new containers removed, the old "
                                                         "ones untouched")

    def _remove(self, ids: list[str]) -> None:
        for container_id in ids:
            with contextlib.suppress(docker.errors.NotFound):
                container = self._client().containers.get(container_id)
                container.stop(timeout=STOP_TIMEOUT)
                container.remove(force=True)

    async def _healthy(self, container: Any, path: str) -> bool:
        await asyncio.to_thread(container.reload)
        health = ((container.attrs.get("State") or {}).get("Health") or {}).get("Status")
        if health is not None:
            return bool(health == "healthy")
        if container.status != "running":
            return False
        port = container.labels.get("turnout.port", "")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session, \
                    session.get(f"http://127.0.0.1:{port}{path}") as response:
                return response.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
