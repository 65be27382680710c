"""Tiny demo upstreams for the default config: each answers any request with its version, in an
``X-Demo-Version`` header and in the body, so that a curl loop shows the split; and the flags Turnout
injected (``X-Turnout-Flags``), if any.

    python -m proxy.demo v1=127.0.0.1:9001 v2=127.0.0.1:9002
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

__all__ = ["main", "make_app"]


def make_app(version: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        flags = request.headers.get("X-Turnout-Flags")
        body = f"hello from {version} ({request.method} {request.path_qs})" + (f" [{flags}]" if flags else "") + "\n"
        return web.Response(text=body, headers={"X-Demo-Version": version})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def _serve(specs: list[tuple[str, str, int]]) -> None:
    runners = []
    for version, host, port in specs:
        runner = web.AppRunner(make_app(version), access_log=None)
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


def main(argv: list[str]) -> int:
    specs = []
    for arg in argv:
        version, _, address = arg.partition("=")
        host, _, port = address.rpartition(":")
        if not version or not host or not port.isdigit():
            print(f"usage: python -m proxy.demo VERSION=HOST:PORT ... (got {arg!r})", file=sys.stderr)
            return 2
        specs.append((version, host, int(port)))
    asyncio.run(_serve(specs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
