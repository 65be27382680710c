"""A control channel over a stream (the supervisor's socket pair with each worker): ``core.wire``
messages, one per line, both ways. The one sender and receiver both ends use."""

from __future__ import annotations

import asyncio
import logging
import socket

from turnout.core import wire
from turnout.core.errors import WireError

__all__ = ["Channel"]

log = logging.getLogger("turnout")


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def over(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    def send(self, message: wire.Message) -> None:
        """Queue a message (never blocks; a closed channel drops it: its end is gone)."""
        if not self.writer.is_closing():
            self.writer.write(wire.encode(message))

    async def receive(self) -> wire.Message | None:
        """The next message, or None once the other end has closed. A line that is not a message (of
        another protocol version, say) is logged and skipped: the next snapshot is complete anyway."""
        while line := await self.reader.readline():
            try:
                return wire.decode(line)
            except WireError as exc:
                log.error("control channel: dropped a line that is not a message: %s", exc)
        return None
