"""One serving process: the current routing snapshot, the upstream pools, the client connections, and
the sweeper that enforces every deadline.

The snapshot is replaced by one assignment (``apply``); connections read ``worker.state`` when a request
head completes, so a request in flight keeps the version and endpoint it was given. Pools are keyed by
endpoint address and outlive snapshots, so a routing change never drops a warm connection.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import random
import socket
from collections.abc import Coroutine
from typing import Any

from turnout.core import buckets, routing, wire
from turnout.core.errors import ConfigError
from turnout.core.health import Health, RetryBudget
from turnout.core.model import Config, Listener
from turnout.core.reader import from_document
from turnout.core.routing import Target
from turnout.core.stats import VersionStats, WorkerStats

from . import tls
from .accesslog import AccessLogWriter
from .checker import Checker, Probe
from .http.context import ServingContext
from .http.downstream import Downstream
from .http.upstream import Pool
from .tls import CertificateSet, Terminator

__all__ = ["Worker"]

log = logging.getLogger("turnout")

# How often deadlines are checked. Timeouts fire at most this much late; the coarse clock (``now``) is
# also what the hot path uses instead of reading the clock per request.
TICK = 0.1


class Listening:
    """A listener as the hot path sees it: its scheme for X-Forwarded-Proto, its redirect, its TLS."""

    __slots__ = ("config", "redirect_https", "scheme", "server", "terminator")

    def __init__(self, config: Listener, certificates: CertificateSet | None) -> None:
        self.config = config
        self.scheme = config.scheme.encode()
        self.redirect_https = config.redirect_https
        self.terminator = Terminator(certificates) if certificates is not None else None
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.sockets
        return int(self.server.sockets[0].getsockname()[1])


class Worker(ServingContext):
    def __init__(self, config: Config, generation: int = 1, tables: buckets.Tables | None = None) -> None:
        """``tables``: as the writer planned them (None: fresh ones, for tests and benchmarks)."""
        self.config = config
        self.limits = config.limits
        self.tls = tls.build(config)
        self.state = routing.build(config, generation, tables)
        self.stats = WorkerStats()
        self.health = Health()
        self.budget = RetryBudget()
        self.checker = Checker(self.health)
        self.access_writer = AccessLogWriter(config.access_log) if config.access_log is not None else None
        self.access_log = self.access_writer  # what the hot path records into
        self.version_stats = self._count_versions(self.state)
        # Snapshots are large and long-lived (bucket tables); moving them out of the collector's
        # view keeps full collections, which the per-request garbage triggers, short.
        gc.freeze()
        self.listeners = {
            listener.name: Listening(listener, self.tls.listeners.get(listener.name))
            for listener in config.listeners
        }
        self.pools: dict[str, Pool] = {}
        self.downstreams: set[Downstream] = set()
        self.clients: dict[str, int] = {}  # open connections per client address
        self.draw = functools.partial(random.Random().getrandbits, 64)
        self.now = 0.0
        self.draining = False
        self.refused: wire.Refused | None = None  # the last snapshot refused, until one is applied
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The first listener's port (what a single-listener config and its tests need)."""
        return next(iter(self.listeners.values())).port

    @property
    def ports(self) -> dict[str, int]:
        return {name: listening.port for name, listening in self.listeners.items()}

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.now = loop.time()
        for name, listening in self.listeners.items():
            sock = sockets[name] if sockets is not None else listen_socket(listening.config)
            terminator = listening.terminator
            listening.server = await loop.create_server(
                functools.partial(Downstream, self, listening), sock=sock, backlog=1024,
                ssl=terminator.context if terminator is not None else None,
                ssl_handshake_timeout=self.limits.header_timeout if terminator is not None else None,
            )
        self._sweeper = loop.create_task(self._sweep())
        self.checker.update(self._probes())

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a background step (an upstream connect); the set keeps the task alive until done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pool(self, target: Target) -> Pool:
        pool = self.pools.get(target.address)
        if pool is None:
            upstream_tls = self.tls.upstreams[target.tls] if target.tls is not None else None
            pool = self.pools[target.address] = Pool(
                target.host, target.port, self.limits,
                upstream_tls.context if upstream_tls else None, upstream_tls.server_name if upstream_tls else None,
            )
            pool.tls_key = target.tls
        return pool

    def apply(self, config: Config, generation: int, tables: buckets.Tables) -> None:
        """Swap in the writer's snapshot: ``config`` as generation ``generation`` with exactly its
        ``tables``, and new certificates. Everything is built before anything is swapped: a failure
        (``ConfigError`` for certificates, ``buckets.TableError``) changes nothing."""
        if _sockets_of(config) != _sockets_of(self.config):
            log.warning("listener changes need a restart; still serving %s",
                        ", ".join(f"{each.scheme}://{each.address}" for each in self.config.listeners))
        material = tls.build(config)
        state = routing.build(config, generation, tables)
        version_stats = self._count_versions(state)
        self.version_stats = version_stats  # before the state: a request never misses its counters
        self.state = state
        gc.freeze()  # see __init__
        self.tls = material
        self.config = config
        self.limits = config.limits
        for listening in self.listeners.values():
            certificates = material.listeners.get(listening.config.name)
            if listening.terminator is not None and certificates is not None:
                listening.terminator.certificates = certificates
        if self._sweeper is not None:  # started: the checks follow the endpoints of the new snapshot
            self.checker.update(self._probes())
        for pool in self.pools.values():
            pool.limits = config.limits
            key = pool.tls_key
            if key is not None and key in material.upstreams:
                pool.ssl = material.upstreams[key].context
                pool.server_name = material.upstreams[key].server_name

    def receive(self, snapshot: wire.Snapshot) -> wire.Ack | wire.Refused:
        """Apply the writer's snapshot exactly, or refuse it and say why (and keep serving the one
        before; the next snapshot is complete, so a refusal is caught up by the next one)."""
        try:
            self.apply(from_document(snapshot.document, snapshot.source), snapshot.generation, snapshot.tables)
        except (ConfigError, buckets.TableError) as exc:
            self.refused = wire.Refused(snapshot.generation, str(exc))
            log.error("refused generation %d, still serving %d: %s", snapshot.generation, self.state.generation, exc)
            return self.refused
        self.refused = None
        return wire.Ack(self.state.generation)

    # -- what the admin API reads (admin.AdminBackend)

    def routing_state(self) -> routing.RoutingState:
        return self.state

    def snapshot(self) -> dict[str, Any]:
        """This worker's numbers and endpoint health, as plain data."""
        return {**self.stats.snapshot(self.state.generation, len(self.downstreams)), "pid": os.getpid(),
                "health": {address: self.health.status(address) for address in self.health.endpoints}}

    async def collect(self) -> list[dict[str, Any]]:
        return [self.snapshot()]

    async def converge(self, generation: int, timeout: float) -> list[dict[str, Any]]:
        return [worker_status(0, os.getpid(), self.state.generation, self.refused, generation)]

    def ready(self) -> bool:
        return not self.draining

    def count_flag(self, key: str, variant: str | None) -> None:
        self.stats.flags[(key, variant or "error")] += 1

    def _probes(self) -> list[Probe]:
        """The active checks the current snapshot asks for (one per endpoint of versions with health)."""
        probes = []
        for service in self.config.services:
            for version in service.versions:
                if version.health is None:
                    continue
                for target in self.state.services[service.name].versions[version.name].endpoints:
                    upstream_tls = self.tls.upstreams.get(target.tls) if target.tls is not None else None
                    scheme = "https" if upstream_tls is not None else "http"
                    url = f"{scheme}://{target.host}:{target.port}{version.health.path}"
                    probes.append(Probe(target.address, url, version.health,
                                        upstream_tls.context if upstream_tls else None,
                                        upstream_tls.server_name if upstream_tls else None))
        return probes

    def _count_versions(self, state: routing.RoutingState) -> dict[routing.VersionRoute, VersionStats]:
        """Each version of a snapshot, mapped to its counters (which outlive snapshots)."""
        return {
            version: self.stats.version(service.name, name)
            for service in state.services.values()
            for name, version in service.versions.items()
        }

    def tick(self, now: float) -> None:
        self.now = now
        self.health.tick(now)
        if self.access_writer is not None:
            self.access_writer.tick(now)
        for down in list(self.downstreams):
            if down.deadline <= now:
                down.expire(now)
            elif down.queue:
                down.check_upstream(now)
        for pool in self.pools.values():
            pool.expire_idle(now)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            self.tick(loop.time())

    async def shutdown(self) -> None:
        """Graceful stop: keep serving for the grace period (so load balancers notice), stop accepting,
        let requests in flight finish within the drain timeout, close idle keep-alives, then stop."""
        self.draining = True  # readiness fails from here, while we still serve: load balancers move away
        limits = self.limits
        await asyncio.sleep(limits.shutdown_grace)
        for listening in self.listeners.values():
            if listening.server is not None:
                listening.server.close()
        for down in list(self.downstreams):
            down.drain()
        loop = asyncio.get_running_loop()
        until = loop.time() + limits.drain_timeout
        while self.downstreams and loop.time() < until:
            await asyncio.sleep(0.05)
        for down in list(self.downstreams):
            log.warning("drain timeout: aborting a connection from %s", down.client_ip)
            down.abort()
        await self._release()

    async def _release(self) -> None:
        """What a stopped worker still holds: idle upstream connections, the sweeper, checks, the log."""
        for pool in self.pools.values():
            pool.close_idle()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.checker.close()
        if self.access_writer is not None:
            self.access_writer.close()

    async def close(self) -> None:
        """Immediate stop (tests): no grace, abort everything."""
        for listening in self.listeners.values():
            if listening.server is not None:
                listening.server.close()
        for task in list(self._tasks):
            task.cancel()
        for down in list(self.downstreams):
            down.abort()
        await self._release()


def _sockets_of(config: Config) -> list[tuple[str, object, str]]:
    return [(each.name, each.address, each.scheme) for each in config.listeners]


def listen_socket(listener: Listener) -> socket.socket:
    """The listening socket of a listener (made before workers fork, so they can share it)."""
    address = listener.address
    return socket.create_server((address.host, address.port), backlog=1024)


def worker_status(index: int, pid: int | None, generation: int, refused: wire.Refused | None,
                  wanted: int) -> dict[str, Any]:
    """One receiver's answer to "do you serve ``wanted``?" (the admin API's ``workers`` list)."""
    status: dict[str, Any] = {"worker": index, "pid": pid, "generation": generation, "converged": generation >= wanted}
    if refused is not None and refused.generation >= wanted:
        status["refused"] = refused.reason
    return status
