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
import random
import socket
from collections.abc import Coroutine
from typing import Any

from . import routing
from .config import Config
from .downstream import Downstream
from .routing import Target
from .upstream import Pool

__all__ = ["Worker"]

log = logging.getLogger("turnout")

# How often deadlines are checked. Timeouts fire at most this much late; the coarse clock (``now``) is
# also what the hot path uses instead of reading the clock per request.
TICK = 0.1


class Worker:
    def __init__(self, config: Config, scheme: bytes = b"http") -> None:
        self.config = config
        self.limits = config.limits
        self.state = routing.build(config)
        # Snapshots are large and long-lived (bucket tables); moving them out of the collector's
        # view keeps full collections, which the per-request garbage triggers, short.
        gc.freeze()
        self.scheme = scheme
        self.pools: dict[str, Pool] = {}
        self.downstreams: set[Downstream] = set()
        self.draw = functools.partial(random.Random().getrandbits, 64)
        self.now = 0.0
        self.server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.sockets
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.now = loop.time()
        if sock is None:
            listen = self.config.listen
            sock = socket.create_server((listen.host, listen.port), backlog=1024)
        self.server = await loop.create_server(lambda: Downstream(self), sock=sock, backlog=1024)
        self._sweeper = loop.create_task(self._sweep())

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a background step (an upstream connect); the set keeps the task alive until done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pool(self, target: Target) -> Pool:
        pool = self.pools.get(target.address)
        if pool is None:
            pool = self.pools[target.address] = Pool(target.host, target.port, self.limits)
        return pool

    def apply(self, config: Config) -> None:
        """Swap in a new snapshot built from ``config`` (bucket tables rebalanced, not rebuilt)."""
        if config.listen != self.config.listen:
            log.warning("listen address changes need a restart; still serving %s", self.config.listen)
        self.state = routing.build(config, self.state)
        gc.freeze()  # see __init__
        self.config = config
        self.limits = config.limits
        for pool in self.pools.values():
            pool.limits = config.limits

    def tick(self, now: float) -> None:
        self.now = now
        for down in list(self.downstreams):
            if down.deadline <= now:
                down.expire(now)
            elif down.queue:
                down.check_upstream(now)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            self.tick(loop.time())

    async def shutdown(self) -> None:
        """Graceful stop: keep serving for the grace period (so load balancers notice), stop accepting,
        let requests in flight finish within the drain timeout, close idle keep-alives, then stop."""
        limits = self.limits
        await asyncio.sleep(limits.shutdown_grace)
        if self.server is not None:
            self.server.close()
        for down in list(self.downstreams):
            down.drain()
        loop = asyncio.get_running_loop()
        until = loop.time() + limits.drain_timeout
        while self.downstreams and loop.time() < until:
            await asyncio.sleep(0.05)
        for down in list(self.downstreams):
            log.warning("drain timeout: aborting a connection from %s", down.client_ip)
            down.abort()
        for pool in self.pools.values():
            pool.close_idle()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            await self.server.wait_closed()

    async def close(self) -> None:
        """Immediate stop (tests): no grace, abort everything."""
        for task in list(self._tasks):
            task.cancel()
        if self.server is not None:
            self.server.close()
        for down in list(self.downstreams):
            down.abort()
        for pool in self.pools.values():
            pool.close_idle()
        if self._sweeper is not None:
            self._sweeper.cancel()
