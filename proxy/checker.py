"""Active health checks: one task per endpoint of the current snapshot, GET its health path every
interval, and tell ``core.health.Health`` (the pure bookkeeping) what it saw."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp

from turnout.core.health import Health
from turnout.core.model import HealthCheck

__all__ = ["Checker", "Probe"]


@dataclass(frozen=True, slots=True)
class Probe:
    address: str
    url: str
    check: HealthCheck
    context: ssl.SSLContext | None
    server_name: str | None


class Checker:
    """Runs the active checks of the current snapshot, one task per endpoint."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self.tasks: dict[Probe, asyncio.Task[None]] = {}
        self.session: aiohttp.ClientSession | None = None

    def update(self, probes: Iterable[Probe]) -> None:
        wanted = set(probes)
        for probe in list(self.tasks):
            if probe not in wanted:
                self.tasks.pop(probe).cancel()
        for probe in wanted - set(self.tasks):
            self.tasks[probe] = asyncio.get_running_loop().create_task(self._run(probe))

    async def _run(self, probe: Probe) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        timeout = aiohttp.ClientTimeout(total=probe.check.timeout)
        while True:
            try:
                async with self.session.get(probe.url, timeout=timeout, ssl=probe.context or False,
                                            server_hostname=probe.server_name, allow_redirects=False) as response:
                    ok = 200 <= response.status < 400
            except (aiohttp.ClientError, TimeoutError, OSError):
                ok = False
            self.health.checked(probe.address, ok, probe.check)
            await asyncio.sleep(probe.check.interval)

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
        if self.session is not None:
            await self.session.close()
