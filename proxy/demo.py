"""Tiny demo upstreams for the default config: each answers any request with its version, in an
``X-Demo-Version`` header and in the body, so that a curl loop shows the split; and the flags Turnout
injected (``X-Turnout-Flags``), if any.

    python -m proxy.demo v1=127.0.0.1:9001 v2=127.0.0.1:9002 v3=127.0.0.1:9003/5

``/5``: that version answers 500 to 5 % of requests (every twentieth): a bad release for a rollout to
catch. ``python -m proxy.demo --load URL`` sends a small, bounded load of sticky users (``X-User-Id``)
so that rollout analysis has requests to judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import aiohttp
from aiohttp import web

__all__ = ["main", "make_app"]


def make_app(version: str, fail_percent: int = 0) -> web.Application:
    served = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        if served * fail_percent // 100 > (served - 1) * fail_percent // 100:  # evenly spread: 5 % is every 20th
            return web.Response(status=500, text=f"{version} failed (demo: {fail_percent} % fail)\n",
                                headers={"X-Demo-Version": version})
        flags = request.headers.get("X-Turnout-Flags")
        body = f"hello from {version} ({request.method} {request.path_qs})" + (f" [{flags}]" if flags else "") + "\n"
        return web.Response(text=body, headers={"X-Demo-Version": version})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def _serve(specs: list[tuple[str, str, int, int]]) -> None:
    runners = []
    for version, host, port, fail in specs:
        runner = web.AppRunner(make_app(version, fail), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


async def _load(url: str, users: int, rate: float, duration: float) -> None:
    """About ``rate`` requests a second from ``users`` sticky users, for at most ``duration`` seconds."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deadline = loop.time() + duration
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        sent = 0
        while not stop.is_set() and loop.time() < deadline:
            sent += 1
            try:
                async with session.get(url, headers={"X-User-Id": f"user-{sent * 7919 % users}"}) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(1)  # the proxy is not up (yet): try again soon
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / rate)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--load"] and len(argv) >= 2:
        asyncio.run(_load(argv[1], users=500, rate=50.0, duration=float(argv[2]) if len(argv) > 2 else 3600))
        return 0
    specs = []
    for arg in argv:
        version, _, address = arg.partition("=")
        address, _, fail = address.partition("/")
        host, _, port = address.rpartition(":")
        if not version or not host or not port.isdigit() or not (fail or "0").isdigit():
            print(f"usage: python -m proxy.demo VERSION=HOST:PORT[/FAIL_PERCENT] ... | --load URL [SECONDS] "
                  f"(got {arg!r})", file=sys.stderr)
            return 2
        specs.append((version, host, int(port), int(fail or 0)))
    asyncio.run(_serve(specs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
