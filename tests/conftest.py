"""Shared fixtures: real upstreams (aiohttp test servers), a Turnout worker on 127.0.0.1:0 in the test's
own event loop (uvloop, as in production), raw-socket helpers, and Turnout as a real subprocess."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from proxy.worker import Worker
from turnout.core import reader

from .helpers import config_text

ROOT = Path(__file__).resolve().parent.parent


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Every async test runs on uvloop, the loop Turnout serves on."""
    return {"uvloop": uvloop.new_event_loop}


# ----------------------------------------------------------------------------------------------- upstreams


class Upstream:
    """An aiohttp app that says who it is and records every request it received."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, Any]] = []
        self.server: TestServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/ws", self.websocket)
        app.router.add_route("*", "/big", self.big)
        app.router.add_route("*", "/chunked", self.chunked)
        app.router.add_route("*", "/sleep", self.sleep)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    def record(self, request: web.Request, **extra: Any) -> dict[str, Any]:
        entry = {
            "version": self.name,
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "peer_port": request.transport.get_extra_info("peername")[1] if request.transport else None,
            **extra,
        }
        self.seen.append(entry)
        return entry

    async def echo(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for data in request.content.iter_any():
            digest.update(data)
            size += len(data)
        entry = self.record(request, body_size=size, body_sha256=digest.hexdigest())
        return web.json_response(entry, headers={"X-Version": self.name})

    async def big(self, request: web.Request) -> web.StreamResponse:
        """Streams ?size= bytes of a known pattern without holding them."""
        size = int(request.query["size"])
        self.record(request)
        response = web.StreamResponse(headers={"X-Version": self.name})
        response.content_length = size
        await response.prepare(request)
        block = bytes(range(256)) * 256  # 64 KiB
        sent = 0 if request.method != "HEAD" else size  # aiohttp would send a HEAD body if asked to
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        response = web.StreamResponse(headers={"X-Version": self.name})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(5):
            await response.write(f"part{i};".encode())
        await response.write_eof()
        return response

    async def sleep(self, request: web.Request) -> web.Response:
        self.record(request)
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text=f"slept {self.name}", headers={"X-Version": self.name})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        self.record(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{message.data}")
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[str], Awaitable[Upstream]]]:
    started: list[TestServer] = []

    async def start(name: str) -> Upstream:
        upstream = Upstream(name)
        server = TestServer(upstream.app(), host="127.0.0.1")
        await server.start_server()
        upstream.server = server
        started.append(server)
        return upstream

    yield start
    for server in started:
        await server.close()


# ----------------------------------------------------------------------------------------------- proxy


@pytest.fixture
async def proxy() -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    workers: list[Worker] = []

    async def start(services: dict[str, Any], **top: Any) -> Worker:
        worker = Worker(reader.parse(config_text(services, **top), "test.yaml"))
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.close()


# ----------------------------------------------------------------------------------------------- subprocess


class ProxyProcess:
    """Turnout run as a user runs it: ``python -m proxy --config FILE``."""

    def __init__(self, config_path: Path, workers: int = 1, cwd: Path = ROOT,
                 env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = config_path.with_suffix(".log")
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(config_path), "--workers", str(workers)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
        )
        self.ports = self._wait_ports()
        self.port = next(iter(self.ports.values()))

    def _wait_ports(self) -> dict[str, int]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            log = self.log_path.read_bytes()
            if b"serving with" in log:
                return {name.decode(): int(port) for port, name in
                        re.findall(rb"listening on \w+://[\d.]+:(\d+) \(listener (\S+)\)", log)}
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited: {self.log_path.read_text()}")
            time.sleep(0.05)
        raise RuntimeError("proxy did not start")

    def output(self) -> str:
        return self.log_path.read_text()

    def admin_url(self) -> str:
        """The admin API's base URL, from the log line it prints once it listens."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            found = re.search(r"admin API on (http://[\d.]+:\d+)", self.output())
            if found:
                return found.group(1)
            time.sleep(0.02)
        raise RuntimeError(f"no admin API: {self.output()}")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 20) -> int:
        return self.process.wait(timeout)

    def rss_peak_kib(self, pids: list[int] | None = None) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def spawn_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def spawn(text: str, workers: int = 1, name: str = "turnout.yaml") -> ProxyProcess:
        path = tmp_path / name
        path.write_text(text)
        process = ProxyProcess(path, workers)
        started.append(process)
        return process

    yield spawn
    for process in started:
        process.stop()


os.environ.setdefault("TURNOUT_LOG_LEVEL", "INFO")
