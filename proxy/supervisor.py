"""Several worker processes on the same listening sockets, and the supervisor's side of talking to them.

Each worker is a separate Python process (``python -m proxy.workerproc``) that inherits the listening
sockets and one end of a socket pair: the control channel (``channel``), carrying ``core.wire``
messages. The supervisor is a receiver of ``Control`` that fans out: it sends each ``Snapshot`` (the
generation, the effective document and the bucket tables, all computed once by ``Control``) to every
worker, which applies exactly that and answers ``Ack`` or ``Refused``; ``Collect`` / ``Report`` fetch
counters for a scrape.

The supervisor keeps a *mirror* snapshot built from the same message, so it answers reads without
asking; a worker started later (a replacement) gets the current snapshot and so holds exactly what
its siblings hold. A change returns once every worker reports the new generation, or says which did
not (and why, if it refused) within the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import socket
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from turnout.core import routing, wire
from turnout.core.model import Config
from turnout.core.routing import RoutingState

from .channel import Channel
from .worker import worker_status

__all__ = ["Supervisor"]

log = logging.getLogger("turnout")

RESPAWN_DELAY = 0.5  # seconds before a dead worker is replaced


@dataclass
class _Member:
    index: int
    process: asyncio.subprocess.Process
    channel: Channel
    generation: int = 0
    refused: wire.Refused | None = None
    waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)


class Supervisor:
    """The workers of one supervisor; implements what the admin API reads (``admin.AdminBackend``)."""

    def __init__(self, sockets: dict[str, socket.socket], count: int) -> None:
        self.sockets = sockets
        self.count = count
        self.members: dict[int, _Member] = {}
        self.state: RoutingState | None = None
        self.snapshot: wire.Snapshot | None = None
        self.stopping = False
        self.draining = False
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self.flag_counts: Counter[tuple[str, str]] = Counter()  # OFREP evaluations answered here

    # -- the desired state

    def apply(self, config: Config, snapshot: wire.Snapshot) -> None:
        """Control's receiver: build the mirror from the snapshot, send it to every worker (not waiting)."""
        self.state = routing.build(config, snapshot.generation, snapshot.tables)
        self.snapshot = snapshot
        for member in self.members.values():
            member.channel.send(snapshot)

    # -- processes

    async def start(self) -> None:
        for index in range(self.count):
            await self._spawn(index)

    async def _spawn(self, index: int) -> None:
        parent, child = socket.socketpair()
        fds = {name: sock.fileno() for name, sock in self.sockets.items()}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.workerproc", json.dumps({"listeners": fds, "control": child.fileno()}),
            pass_fds=[*fds.values(), child.fileno()],
        )
        child.close()
        member = _Member(index, process, await Channel.over(parent))
        self.members[index] = member
        assert self.snapshot is not None
        member.channel.send(self.snapshot)  # a new worker starts from the current snapshot, as its siblings hold
        asyncio.get_running_loop().create_task(self._listen(member))
        asyncio.get_running_loop().create_task(self._watch(member))

    async def _listen(self, member: _Member) -> None:
        while (message := await member.channel.receive()) is not None:
            if isinstance(message, wire.Ack):
                member.generation, member.refused = message.generation, None
                self._changed.set()
            elif isinstance(message, wire.Refused):
                member.refused = message
                log.error("worker %d refused generation %d: %s", member.process.pid, message.generation,
                          message.reason)
                self._changed.set()
            elif isinstance(message, wire.Report):
                waiter = member.waiting.pop(message.request, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message.stats)

    async def _watch(self, member: _Member) -> None:
        code = await member.process.wait()
        for waiter in member.waiting.values():
            if not waiter.done():
                waiter.cancel()
        if self.members.get(member.index) is member:
            del self.members[member.index]
        if not self.stopping:
            log.error("worker %d exited (status %d); starting a new one", member.process.pid, code)
            await asyncio.sleep(RESPAWN_DELAY)  # a worker that dies at once must not spin the supervisor
            if not self.stopping:
                await self._spawn(member.index)

    async def stop(self) -> None:
        """Forward the graceful stop to every worker and wait for their drains."""
        self.stopping = True
        self.draining = True
        for member in list(self.members.values()):
            with contextlib.suppress(ProcessLookupError):
                member.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(member.process.wait() for member in list(self.members.values())))

    # -- admin.AdminBackend

    def routing_state(self) -> RoutingState:
        assert self.state is not None
        return self.state

    def ready(self) -> bool:
        return not self.draining

    def count_flag(self, key: str, variant: str | None) -> None:
        self.flag_counts[(key, variant or "error")] += 1

    async def collect(self) -> list[dict[str, Any]]:
        """A fresh snapshot from every worker (one scrape shows them all)."""
        loop = asyncio.get_running_loop()
        waiters = []
        for member in sorted(self.members.values(), key=lambda m: m.index):
            request = next(self._ids)
            waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
            member.waiting[request] = waiter
            member.channel.send(wire.Collect(request))
            waiters.append(waiter)
        results = await asyncio.gather(*(asyncio.wait_for(w, 5) for w in waiters), return_exceptions=True)
        snapshots = [r for r in results if isinstance(r, dict)]
        if snapshots and self.flag_counts:  # the supervisor's own OFREP answers, added to one worker's
            snapshots[0]["flags"] = [*snapshots[0].get("flags", []),
                                     *([flag, variant, count] for (flag, variant), count in self.flag_counts.items())]
        return snapshots

    async def converge(self, generation: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until every worker serves ``generation`` (or refused it); say where each one is."""
        deadline = asyncio.get_running_loop().time() + timeout

        def waiting() -> bool:
            return any(m.generation < generation and not (m.refused and m.refused.generation >= generation)
                       for m in self.members.values())

        while waiting():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):  # not wait_for: it can swallow a cancellation on 3.11
                    await self._changed.wait()
        return [worker_status(m.index, m.process.pid, m.generation, m.refused, generation)
                for m in sorted(self.members.values(), key=lambda m: m.index)]
