"""Several worker processes on the same listening sockets, and the supervisor's side of talking to them.

Each worker is a separate Python process (``python -m proxy.workerproc``) that inherits the listening
sockets and one end of a socket pair: the control channel. Messages are JSON lines:

    supervisor -> worker   {"type": "config", "document": ..., "tables": ..., "generation": G}
                           {"type": "stats", "id": N}
    worker -> supervisor   {"type": "applied", "generation": G}  or  {"type": "refused", "error": "..."}
                           {"type": "stats", "id": N, "snapshot": {...}}

The supervisor keeps a *mirror* snapshot built by the same pure code the workers run, so it knows the
generation and the bucket tables without asking; a worker started later (a replacement) gets the
current document and tables and so holds exactly what its siblings hold. A change returns once every
worker reports the new generation, or says which did not within the timeout.
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

from .control import Tables, encode_tables
from .core import routing
from .core.model import Config
from .core.routing import RoutingState

__all__ = ["Fleet"]

log = logging.getLogger("turnout")

RESPAWN_DELAY = 0.5  # seconds before a dead worker is replaced


@dataclass
class _Member:
    index: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    generation: int = 0
    waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)


class Fleet:
    """The workers of one supervisor; implements what the admin API reads (``admin.AdminBackend``)."""

    def __init__(self, sockets: dict[str, socket.socket], count: int) -> None:
        self.sockets = sockets
        self.count = count
        self.members: dict[int, _Member] = {}
        self.state: RoutingState | None = None
        self.message: dict[str, Any] = {}
        self.stopping = False
        self.draining = False
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self.flag_counts: Counter[tuple[str, str]] = Counter()  # OFREP evaluations answered here

    # -- the desired state

    def boot(self, config: Config, document: Any, generation: int, tables: Tables) -> RoutingState:
        self.state = routing.build(config, generation=generation, tables=tables)
        self.message = {"type": "config", "source": config.source, "document": document,
                        "tables": encode_tables(self.state.tables()), "generation": generation}
        return self.state

    def apply(self, config: Config, document: Any, tables: Tables | None) -> RoutingState:
        """Control's ``apply``: build the mirror, send the new config to every worker (not waiting)."""
        self.state = routing.build(config, self.state, tables=tables)
        # Workers rebalance from their own previous tables, exactly as the mirror did; explicit tables
        # (a rollback) are sent so that they use them as they are.
        self.message = {"type": "config", "source": config.source, "document": document,
                        "tables": encode_tables(tables) if tables else None, "generation": self.state.generation}
        for member in self.members.values():
            self._send(member, self.message)
        return self.state

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
        reader, writer = await asyncio.open_connection(sock=parent)
        member = _Member(index, process, writer)
        self.members[index] = member
        assert self.state is not None
        # A new worker starts from the current document and the mirror's tables: the same snapshot.
        self._send(member, {**self.message, "tables": encode_tables(self.state.tables()),
                            "generation": self.state.generation})
        asyncio.get_running_loop().create_task(self._listen(member, reader))
        asyncio.get_running_loop().create_task(self._watch(member))

    async def _listen(self, member: _Member, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            message = json.loads(line)
            if message["type"] == "applied":
                member.generation = message["generation"]
                self._changed.set()
            elif message["type"] == "refused":
                log.error("worker %d refused a config: %s", member.process.pid, message["error"])
            elif message["type"] == "stats":
                waiter = member.waiting.pop(message["id"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message["snapshot"])

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

    def _send(self, member: _Member, message: dict[str, Any]) -> None:
        if not member.writer.is_closing():
            member.writer.write(json.dumps(message).encode() + b"\n")

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
            self._send(member, {"type": "stats", "id": request})
            waiters.append(waiter)
        results = await asyncio.gather(*(asyncio.wait_for(w, 5) for w in waiters), return_exceptions=True)
        snapshots = [r for r in results if isinstance(r, dict)]
        if snapshots and self.flag_counts:  # the supervisor's own OFREP answers, added to one worker's
            snapshots[0]["flags"] = [*snapshots[0].get("flags", []),
                                     *([flag, variant, count] for (flag, variant), count in self.flag_counts.items())]
        return snapshots

    async def converge(self, generation: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until every worker serves ``generation``; say where each one is."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(m.generation < generation for m in self.members.values()):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return [{"worker": m.index, "pid": m.process.pid, "generation": m.generation,
                 "converged": m.generation >= generation} for m in sorted(self.members.values(), key=lambda m: m.index)]

