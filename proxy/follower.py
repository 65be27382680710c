"""A managed proxy's side of the controller: follow it, apply exactly what it ships, keep it on disk.

A managed proxy's file has listeners, limits, TLS and its admin listener, and a ``controller`` section
instead of services and flags. The follower long-polls the controller (``POST /v1/watch`` with a
``wire.Poll``: this proxy's id, the generation it serves, the last one it refused and why, its
counters), merges each ``wire.Snapshot``'s routing document into the local document, and hands the
result to the receivers (this process's worker, or a supervisor's workers) with the controller's
generation and tables as they are. What it served last is cached in ``<config>.snapshot.json``
(atomically), so a restart while the controller is down serves it again (static stability); while the
controller is unreachable it keeps serving and retries with a capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from turnout.api import tokens
from turnout.core import wire
from turnout.core.errors import ConfigError, WireError
from turnout.core.model import Config, Managed
from turnout.core.reader import from_document, read_document
from turnout.io import statefile

__all__ = ["Follower", "controller_token", "merged"]

log = logging.getLogger("turnout")

WAIT = 30.0  # seconds the controller may hold a poll open
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0

# (config, snapshot) -> (the generation the receivers now serve, the reason they refused, if they did)
Receive = Callable[[Config, wire.Snapshot], Awaitable[tuple[int, str | None]]]


def controller_token(managed: Managed, source: str) -> str:
    """The controller's token (the controller creates it; a proxy only reads it)."""
    return tokens.load(source, "controller", managed.token_env, managed.token_file, create=False)


def merged(local: Any, routing: Any) -> Any:
    """The local document with the controller's services and flags in it."""
    return {**{k: v for k, v in local.items() if k not in ("services", "flags")}, **routing}


class Follower:
    def __init__(self, config_path: Path, local: Any, managed: Managed, token: str) -> None:
        self.source = str(config_path)
        self.cache_path = config_path.with_name(config_path.name + ".snapshot.json")
        self.local = local
        self.managed = managed
        self.token = token
        self.generation = 0  # what the receivers serve
        self.refused = 0
        self.reason = ""
        self.receive: Receive | None = None
        self.collect: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None
        self.reachable: bool | None = None  # for logging changes only
        self.address = ""  # where this proxy serves, once its sockets are bound
        self.last: wire.Snapshot | None = None  # the controller's snapshot the receivers serve

    # -- boot: the cached snapshot, if any

    def boot(self) -> tuple[Config, wire.Snapshot]:
        """What to serve before the controller answers: the cached snapshot, else no services at all."""
        cached = self._cached()
        if cached is not None:
            try:
                config = from_document(merged(self.local, cached.document), self.source)
            except ConfigError as exc:
                log.error("the cached snapshot does not fit this file any more (%s); waiting for the controller", exc)
            else:
                self.generation, self.last = cached.generation, cached
                log.info("serving the cached generation %d until %s answers", cached.generation, self.managed.url)
                return config, self._local(cached)
        empty = wire.Snapshot(0, self.source, {}, {})
        return from_document(merged(self.local, {}), self.source), self._local(empty)

    def _cached(self) -> wire.Snapshot | None:
        try:
            data = statefile.read(self.cache_path)
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s); waiting for the controller", self.cache_path, exc)
            return None
        if data is None:
            return None
        try:
            message = wire.decode(json.dumps(data))
        except WireError as exc:
            log.error("%s is not a snapshot (%s); waiting for the controller", self.cache_path, exc)
            return None
        return message if isinstance(message, wire.Snapshot) else None

    def _local(self, snapshot: wire.Snapshot) -> wire.Snapshot:
        """The controller's snapshot as the receivers take it: merged into the local document."""
        return wire.Snapshot(snapshot.generation, self.source, merged(self.local, snapshot.document), snapshot.tables)

    # -- following

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=WAIT + 15, sock_connect=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    snapshot = await self._poll(session, headers)
                except (aiohttp.ClientError, TimeoutError, OSError, WireError, _Refused) as exc:
                    self._reachable(False, str(exc) or type(exc).__name__)
                    await asyncio.sleep(backoff * (0.5 + random.random()))  # jitter: a fleet does not poll in step
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                self._reachable(True, "")
                backoff = BACKOFF_FIRST
                if snapshot is not None:
                    await self._apply(snapshot)

    async def _poll(self, session: aiohttp.ClientSession, headers: dict[str, str]) -> wire.Snapshot | None:
        stats = {"workers": await self.collect()} if self.collect is not None else {}
        poll = wire.Poll(self.managed.id, self.address, self.generation, self.refused, self.reason, stats)
        async with session.post(f"{self.managed.url}/v1/watch?wait={WAIT:g}", data=wire.encode(poll),
                                headers=headers) as response:
            if response.status == 204:
                return None
            body = await response.read()
            if response.status != 200:
                raise _Refused(f"{response.status}: {body[:200].decode(errors='replace')}")
        message = wire.decode(body)
        if not isinstance(message, wire.Snapshot):
            raise WireError(f"a {type(message).__name__} where a snapshot was due")
        return message

    async def _apply(self, snapshot: wire.Snapshot) -> None:
        """Apply exactly the controller's snapshot, or refuse it and say so with the next poll."""
        assert self.receive is not None
        try:
            config = from_document(merged(self.local, snapshot.document), self.source)
        except ConfigError as exc:
            self._refuse(snapshot.generation, str(exc))
            return
        served, reason = await self.receive(config, self._local(snapshot))
        if reason is not None:
            self._refuse(snapshot.generation, reason)
            return
        self.generation, self.refused, self.reason, self.last = served, 0, "", snapshot
        try:
            statefile.write(self.cache_path, json.loads(wire.encode(snapshot)))
        except OSError as exc:
            log.error("cannot cache generation %d in %s: %s", served, self.cache_path, exc.strerror)
        log.info("applied generation %d from %s", served, self.managed.url)

    async def reload_local(self) -> bool:
        """SIGHUP: this proxy's own file again (listeners aside, which need a restart), applied with the
        routing it serves now, as the same generation. A bad file changes nothing and says why."""
        assert self.receive is not None
        try:
            local = read_document(Path(self.source).read_text(encoding="utf-8"), self.source)
            managed = from_document(merged(local, {}), self.source).controller
            if managed is None or (isinstance(local, dict) and (local.get("services") or local.get("flags"))):
                raise ConfigError(self.source, "controller", "a managed proxy's file keeps its controller section "
                                  "and has no services or flags (to stop following the controller, restart)")
            routing = self.last.document if self.last is not None else {}
            config = from_document(merged(local, routing), self.source)
        except OSError as exc:
            log.error("reload refused, still serving generation %d: %s: %s", self.generation, self.source, exc.strerror)
            return False
        except ConfigError as exc:
            log.error("reload refused, still serving generation %d: %s", self.generation, exc)
            return False
        previous, self.local = self.local, local
        current = self.last or wire.Snapshot(0, self.source, {}, {})
        _, reason = await self.receive(config, self._local(current))
        if reason is not None:
            self.local = previous
            log.error("reload refused, still serving generation %d: %s", self.generation, reason)
            return False
        self.managed = managed  # a new controller URL or id takes effect with the next poll
        log.info("reloaded %s: generation %d from %s with this file", self.source, self.generation, managed.url)
        return True

    def _refuse(self, generation: int, reason: str) -> None:
        self.refused, self.reason = generation, reason
        log.error("refused generation %d from the controller, still serving %d: %s", generation, self.generation,
                  reason)

    def _reachable(self, now: bool, why: str) -> None:
        if now != self.reachable:
            if now:
                log.info("following the controller at %s", self.managed.url)
            else:
                log.warning("controller %s unreachable (%s): serving generation %d, retrying", self.managed.url,
                            why, self.generation)
            self.reachable = now


class _Refused(Exception):
    """The controller answered the poll with an error."""
