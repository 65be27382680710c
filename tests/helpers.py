"""Helpers for tests: config builders and raw-socket HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import yaml


def service(versions: dict[str, Any], rules: list[dict[str, Any]] | None = None,
            **route: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"versions": {name: eps for name, eps in versions.items()}}
    if rules is not None:
        body["rules"] = rules
    else:
        body.update(route)
    return body


def config_text(services: dict[str, Any], **top: Any) -> str:
    return yaml.safe_dump({"listen": "127.0.0.1:0", "services": services, **top}, sort_keys=False)


async def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes, read until the proxy closes or ``timeout`` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                chunks.append(data)
    except TimeoutError:
        pass
    writer.close()
    return b"".join(chunks)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


class RawUpstream:
    """A bare TCP upstream: records the bytes it receives and answers each connection with ``reply``
    once it has seen a complete request head. For responses aiohttp would not produce."""

    def __init__(self, reply: bytes, close: bool = True) -> None:
        self.reply = reply
        self.close = close
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                piece = await reader.read(65536)
                if not piece:
                    return
                data += piece
            self.received.append(data)
            writer.write(self.reply)
            await writer.drain()
            if self.close:
                writer.close()
            else:
                await reader.read()
        except ConnectionError:
            pass

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def picks(port: int, users: range) -> dict[str, str]:
    """The version each user ``u<i>`` (header X-User) gets through the proxy on ``port``."""
    seen = {}
    async with aiohttp.ClientSession() as session:
        for i in users:
            async with session.get(f"http://127.0.0.1:{port}/", headers={"X-User": f"u{i}"}) as response:
                assert response.status == 200, await response.text()
                seen[f"u{i}"] = response.headers["X-Version"]
    return seen
