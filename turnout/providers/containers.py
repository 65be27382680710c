"""The Docker provider: the engine's running containers labelled ``turnout.service``, as whole
snapshots of plain ``discovery.Container`` records.

The Docker SDK is synchronous, so the provider runs it in a thread: it lists the containers, hands the
snapshot to the event loop (``loop.call_soon_threadsafe``), then blocks on the engine's event stream and
lists again on every event that can change what it found (start, die, stop, health_status, destroy,
pause, unpause). A lost engine is retried with a capped backoff; each new connection starts with a
full listing, so nothing is missed in between. The records are translated by the pure
``turnout.core.discovery``; nothing here decides routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

import docker
import docker.errors
import requests.exceptions

from turnout.core.errors import ChangeError

from ..core.discovery import Container, translate
from ..core.writer import Writer

__all__ = ["DockerProvider", "follow", "record"]

log = logging.getLogger("turnout")

LABEL = "turnout.service"
EVENTS = {"start", "die", "stop", "kill", "health_status", "destroy", "pause", "unpause", "restart", "create"}
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0


def record(attrs: dict[str, Any]) -> Container:
    """A container as the engine's API describes it (``docker inspect``) -> a plain record."""
    config, state = attrs.get("Config") or {}, attrs.get("State") or {}
    settings = attrs.get("NetworkSettings") or {}
    networks = settings.get("Networks") or {}
    health = (state.get("Health") or {}).get("Status")
    return Container(
        id=str(attrs.get("Id", "")),
        name=str(attrs.get("Name", "")).lstrip("/"),
        labels=dict(config.get("Labels") or {}),
        running=bool(state.get("Running")) and not state.get("Paused"),
        health=str(health) if health else None,
        network_mode=str((attrs.get("HostConfig") or {}).get("NetworkMode", "")),
        addresses={name: str(net.get("IPAddress") or "") for name, net in networks.items()},
    )


class DockerProvider:
    def __init__(self, url: str, found: Callable[[list[Container]], None]) -> None:
        """``url``: the engine (``unix:///var/run/docker.sock``); ``found``: called on the event loop
        with each whole snapshot."""
        self.url = url
        self.found = found
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: docker.DockerClient | None = None
        self.reachable: bool | None = None
        self.refresh: Callable[[], None] = lambda: None  # set by ``follow``
        self.records: list[Container] = []  # the last listing (on the event loop)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._thread = threading.Thread(target=self._run, args=(loop,), name="docker-provider", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):  # closing a client that is already gone
                client.close()  # unblocks the event stream

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                self._client = docker.DockerClient(base_url=self.url, timeout=10)
                events = self._client.events(decode=True, filters={"type": "container", "label": LABEL})
                self._publish(loop)  # after subscribing: an event between the two cannot be missed
                self._seen(True, "")
                backoff = BACKOFF_FIRST
                for event in events:
                    if self._stop.is_set():
                        return
                    if event.get("status", event.get("Action", "")).split(":")[0] in EVENTS:
                        self._publish(loop)
            except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
                if self._stop.is_set():
                    return
                self._seen(False, str(exc))
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _publish(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._client is not None
        listed = self._client.containers.list(filters={"label": LABEL})
        records = [record(container.attrs) for container in listed]
        loop.call_soon_threadsafe(self.found, records)

    def _seen(self, reachable: bool, why: str) -> None:
        if reachable != self.reachable:
            if reachable:
                log.info("docker provider: watching %s", self.url)
            else:
                log.warning("docker provider: %s unreachable (%s); retrying", self.url, why)
            self.reachable = reachable


def follow(url: str, writer: Writer, loop: asyncio.AbstractEventLoop,
           draining: Callable[[], AbstractSet[str]] = frozenset) -> DockerProvider:
    """Feed a Docker engine's containers to ``writer`` as its discovery layer, from now on: each
    snapshot is translated (bad labels logged once and skipped) and becomes a generation if it changes
    the routing. A snapshot the routing cannot take is refused with one line; the layer stays.
    ``draining``: the ids of containers being retired (their endpoints drain); ``refresh()`` on the
    provider translates the last snapshot again when that set changes."""
    told: set[str] = set()

    def found(records: list[Container]) -> None:
        provider.records = records
        discovered = translate(records, draining())
        for problem in discovered.problems:
            if problem not in told:
                log.warning("docker provider: %s", problem)
        told.clear()
        told.update(discovered.problems)
        try:
            entry = writer.discover("docker", discovered)
        except ChangeError as exc:
            log.error("docker provider: what it found is refused, still serving generation %d: %s%s",
                      writer.generation, f"{exc.field}: " if exc.field else "", exc.message)
            return
        if entry is not None:
            log.info("docker provider: generation %d: %s", entry.generation, _summary(discovered))

    provider = DockerProvider(url, found)
    provider.refresh = lambda: found(provider.records)
    provider.start(loop)
    return provider


def _summary(discovered: Any) -> str:
    parts = []
    for service, entry in sorted(discovered.services.items()):
        versions = ", ".join(f"{v} ({len(e['endpoints'])})" for v, e in sorted(entry["versions"].items()))
        parts.append(f"{service}: {versions}")
    return "; ".join(parts) or "no labelled containers"
