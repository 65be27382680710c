"""The upstream side of the hot path: keep-alive connections to endpoints, pooled per endpoint.

An ``UpstreamConnection`` parses responses with httptools and hands every event to the exchange it is
serving (``downstream.Exchange``). It never decides anything about the client; it only says what the
upstream did. A connection goes back to its ``Pool`` only after a complete response that allows
keep-alive, and only after the whole ``data_received`` call has been parsed, so that bytes after the
end of a response (a protocol violation) are seen before anyone else can reuse it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol, cast

import httptools

if TYPE_CHECKING:
    from ssl import SSLContext

    from .exchange import Exchange

__all__ = ["Pool", "UpstreamConnection"]

# A response head longer than this is refused (502) instead of buffered without end.
RESPONSE_HEAD_LIMIT: Final = 64 * 1024


# A response body with a Content-Length at least this big bypasses the parser: its bytes go from the
# read to the client as they are (no slice copied out of each read for the body callback).
STREAM_FROM: Final = 16 * 1024


class HeadTooLarge(Exception):
    pass


class StreamBody(Exception):
    """Raised from ``on_headers_complete`` to stop the parser where a large body begins."""


class PoolLimits(Protocol):
    @property
    def max_connections_per_endpoint(self) -> int: ...
    @property
    def max_idle_per_endpoint(self) -> int: ...
    @property
    def upstream_idle_timeout(self) -> float: ...


class Pool:
    """Connections to one endpoint: idle ones (LIFO, so a warm one is reused first), a cap on all
    open ones, and the exchanges waiting for a connection when the cap is reached."""

    __slots__ = ("address", "closed", "host", "idle", "limits", "open", "port", "server_name", "ssl", "tls_key",
                 "waiters")

    def __init__(self, host: str, port: int, limits: PoolLimits, ssl: SSLContext | None = None,
                 server_name: str | None = None) -> None:
        self.host = host
        self.port = port
        self.address = f"https://{host}:{port}" if ssl is not None else f"{host}:{port}"
        self.limits = limits
        self.ssl = ssl  # replaced on reload; connections already open keep their session
        self.server_name = server_name
        self.tls_key: tuple[str, str] | None = None  # the (service, version) whose TLS settings it uses
        self.idle: list[UpstreamConnection] = []
        self.open = 0  # established and connecting
        self.waiters: deque[Exchange] = deque()
        self.closed = False

    def take(self) -> UpstreamConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.transport.is_closing():
                return conn
        return None

    def can_open(self) -> bool:
        return self.open < self.limits.max_connections_per_endpoint

    def reserve(self) -> None:
        """Count a connection against the cap from the moment it is decided, not when the connect
        task first runs: two requests in one loop iteration must not both see a free slot."""
        self.open += 1

    async def connect(self, timeout: float) -> UpstreamConnection:
        """A new connection in a slot already reserved; the slot is given back if it fails."""
        try:
            loop = asyncio.get_running_loop()
            if self.ssl is None:
                made = loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port)
            else:
                made = loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.server_name or self.host, ssl_handshake_timeout=timeout,
                )
            _, conn = await asyncio.wait_for(made, timeout)
        except BaseException:
            self.open -= 1
            raise
        return conn

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Back to the pool after a clean, reusable response; handed straight to a waiter if any."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.wants_connection():
                waiter.attach(conn, reused=True)
                return
        if self.closed or len(self.idle) >= self.limits.max_idle_per_endpoint:
            conn.transport.close()
        else:
            conn.deadline = now + self.limits.upstream_idle_timeout
            self.idle.append(conn)

    def lost(self, conn: UpstreamConnection) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        # A freed slot lets the oldest waiter open a connection of its own.
        while self.waiters and self.can_open():
            waiter = self.waiters.popleft()
            if waiter.wants_connection():
                waiter.open_connection(self)
                break

    def expire_idle(self, now: float) -> None:
        """Close connections idle past the timeout (the sweeper calls this). Closing them ourselves,
        before the upstream's own keep-alive timeout does, keeps requests off connections that are
        about to close under them. The oldest sit at the bottom of the LIFO stack."""
        idle = self.idle
        while idle and idle[0].deadline <= now:
            idle.pop(0).transport.close()

    def close_idle(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.transport.close()
        self.idle.clear()


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "began",
        "body_after_end",
        "body_left",
        "deadline",
        "done",
        "exchange",
        "fresh",
        "head_bytes",
        "headers",
        "parser",
        "pool",
        "read_paused",
        "reads",
        "reason",
        "reset_parser",
        "reusable",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.body_left = 0  # bytes of a streamed body still to come (0: the parser reads)
        self.reads = 0  # reads parsed so far, and the one the current response began at the start of
        self.began = -1
        self.fresh = False  # no response began yet in the read being parsed
        self.reason = b""
        self.done = False
        self.reusable = False
        self.reset_parser = False
        self.body_after_end = False
        self.read_paused = False
        self.deadline = float("inf")
        self.tunnel: asyncio.Transport | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        exchange = self.exchange
        if exchange is None:  # an idle connection must not speak; it can't be trusted again
            self.transport.close()
            return
        exchange.upstream_progress()
        try:
            if self.body_left:
                self.stream_body(exchange, data)
            else:
                self.reads += 1
                self.fresh = True
                self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            exchange.upstream_upgraded(self, data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, StreamBody):
                # Stopped where the body begins; the head was this read's start (on_headers_complete).
                self.parser = httptools.HttpResponseParser(self)
                start = data.find(b"\r\n\r\n") + 4
                if start < len(data):
                    self.stream_body(exchange, memoryview(data)[start:])
            else:
                self.transport.close()
                reason = "response head too large" if isinstance(exc.__context__, HeadTooLarge) else str(exc)
                exchange.fail(502, f"bad response from upstream {self.pool.address}: {reason}")
                return
        finally:
            exchange.down.flush()
        if self.reset_parser:  # a HEAD response: httptools cannot be told to expect no body
            self.parser = httptools.HttpResponseParser(self)
            self.reset_parser = False
        if self.done:
            self.done = False
            self.exchange = None
            if self.reusable and not self.body_after_end:
                if self.read_paused:
                    self.read_paused = False
                    self.transport.resume_reading()
                self.pool.release(self, exchange.down.worker.now)
            else:
                self.transport.close()
            exchange.response_done()

    def stream_body(self, exchange: Exchange, data: bytes | memoryview) -> None:
        left = self.body_left
        if len(data) > left:  # bytes after the end of the response: the connection cannot be trusted
            data = data[:left]
            self.body_after_end = True
        self.body_left = left - len(data)
        exchange.response_body(data)
        if not self.body_left:
            self.done = True

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.down.pause_for_upstream(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.down.pause_for_upstream(False)

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self.headers = []
        self.head_bytes = 0
        self.began = self.reads if self.fresh else -1
        self.fresh = False

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > RESPONSE_HEAD_LIMIT:
            raise HeadTooLarge
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            exchange.response_interim(status, self.reason, self.headers)
            return
        self.reusable = self.parser.should_keep_alive()
        exchange.response_head(status, self.reason, self.headers)
        if exchange.head_request:
            self.done = True
            self.reset_parser = True
        elif exchange.stream_length >= STREAM_FROM and self.began == self.reads:
            # The whole head came at the start of this read, so its end is the first blank line in it
            # (llhttp refuses bare LF): stop here and stream the body past the parser.
            self.body_left = exchange.stream_length
            raise StreamBody

    def on_body(self, body: bytes) -> None:
        if self.done:
            self.body_after_end = True
            return
        assert self.exchange is not None
        self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200 and self.parser.get_status_code() != 101:
            return
        self.done = True

    # -- control from the exchange

    def set_reading(self, on: bool) -> None:
        if on == self.read_paused:
            self.read_paused = not on
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()
