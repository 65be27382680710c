"""One request and its response, from the client's connection to an upstream connection and back.

An exchange is created when the request head is complete and routed. It becomes *active* when every
earlier request on the same client connection has been answered (HTTP/1.1 pipelining keeps order).
Until it has an upstream connection, request body bytes are buffered (bounded: the client is paused);
once attached, they stream straight through with the framing recomputed. The response is re-framed
the same way, and what one ``data_received`` produced is written to the client in one write.

Failure rules: a connect failure is 502, a connect or read timeout 504, a version with no
endpoint 503; once response bytes have reached the client, any failure aborts the client connection so
the client never mistakes a cut body for a whole one. A request is retried only when a *reused* idle
connection turned out to be dead before answering and the request is idempotent and has no body.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Set as AbstractSet
from time import monotonic
from typing import TYPE_CHECKING, Any, Final

from .http1 import CRLF, HOP_BY_HOP, LAST_CHUNK, PLAIN_TOKENS, chunk, connection_tokens, local_response, status_line

if TYPE_CHECKING:
    from turnout.core.routing import Target, VersionRoute
    from turnout.core.stats import VersionStats

    from .downstream import Downstream
    from .upstream import Pool, UpstreamConnection

__all__ = ["Exchange"]

log = logging.getLogger("turnout")

# Request body bytes buffered while no upstream connection is attached, before the client is paused.
PENDING_LIMIT: Final = 256 * 1024

# A response body piece at least this big is written as a buffer of its own, not copied into a join.
LARGE_PIECE: Final = 16 * 1024

# Framing of the response towards the client.
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3

_NO_BODY_STATUSES: Final = frozenset({204, 304})


class Exchange:
    __slots__ = (
        "attempts",
        "born",
        "cancelled",
        "chunked",
        "client_keep_alive",
        "close_after",
        "conn",
        "discarding",
        "down",
        "expect_continue",
        "finished",
        "framing",
        "head",
        "head_request",
        "http11",
        "local",
        "log_fields",
        "pending",
        "pending_bytes",
        "request_done",
        "response_complete",
        "response_started",
        "retried",
        "retryable",
        "reused",
        "route",
        "sent",
        "set_cookie",
        "started",
        "stats",
        "status",
        "stream_length",
        "target",
        "tried",
        "upgrade",
        "upstream_until_close",
    )

    def __init__(self, down: Downstream, *, head: bytes = b"", target: Target | None = None,
                 chunked: bool = False, head_request: bool = False,
                 client_keep_alive: bool = True, http11: bool = True, upgrade: bool = False,
                 retryable: bool = False, expect_continue: bool = False, set_cookie: bytes = b"",
                 local: bytes | None = None, close_after: bool = False, status: int = 0,
                 stats: VersionStats | None = None, route: VersionRoute | None = None) -> None:
        self.down = down
        self.head = head
        self.target = target
        self.chunked = chunked
        self.head_request = head_request
        self.client_keep_alive = client_keep_alive
        self.http11 = http11
        self.upgrade = upgrade
        self.retryable = retryable
        self.expect_continue = expect_continue
        self.set_cookie = set_cookie
        self.local = local
        self.close_after = close_after
        self.status = status  # what the client was answered (0 until then: an abort stays 0)
        self.stats = stats  # where this exchange is counted, if it was routed to a version
        self.born = monotonic()
        self.route = route  # the version it was routed to: retries pick other endpoints of it
        self.tried: set[str] = set()
        self.attempts = 0
        self.discarding = False  # a retryable error answer is being read and dropped
        self.sent = 0  # response body bytes passed to the client
        self.log_fields: dict[str, Any] | None = None  # set only when the access log is on
        self.conn: UpstreamConnection | None = None
        self.pending: list[bytes | memoryview] = []
        self.pending_bytes = 0
        self.request_done = False
        self.response_started = False
        self.response_complete = False
        self.upstream_until_close = False
        self.framing = NO_BODY
        self.stream_length = 0  # a Content-Length body's length, which the upstream side may stream
        self.started = False
        self.finished = False
        self.cancelled = False
        self.reused = False
        self.retried = False

    # ------------------------------------------------------------------ request side (from Downstream)

    def request_body(self, data: bytes) -> None:
        if self.finished or self.local is not None:
            return  # the answer is already decided; the bytes only need to be consumed
        framed = chunk(data) if self.chunked else (data,)
        conn = self.conn
        if conn is not None:
            conn.transport.writelines(framed)
            conn.deadline = self.down.worker.now + self.down.limits.read_timeout
        else:
            self.pending.extend(framed)
            self.pending_bytes += len(data)
            if self.pending_bytes > PENDING_LIMIT:
                self.down.pause_for_buffer(True)

    def request_end(self) -> None:
        self.request_done = True
        if self.chunked and not self.finished and self.local is None:
            if self.conn is not None:
                self.conn.transport.write(LAST_CHUNK)
            else:
                self.pending.append(LAST_CHUNK)
        if self.response_complete and not self.finished:
            self.finish()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Called when this exchange reaches the head of its connection's queue."""
        self.started = True
        if self.local is not None:
            self.response_started = True
            self.down.write(self.local)
            self.response_complete = True
            if self.request_done or self.close_after:
                self.finish()
            return
        self.connect_upstream()

    def connect_upstream(self) -> None:
        assert self.target is not None
        pool = self.down.worker.pool(self.target)
        conn = pool.take()
        if conn is not None:
            self.attach(conn, reused=True)
        elif pool.can_open():
            self.open_connection(pool)
        else:
            pool.waiters.append(self)
            self.down.wait_for_pool()

    def wants_connection(self) -> bool:
        return self.conn is None and not self.finished and not self.cancelled

    def open_connection(self, pool: Pool) -> None:
        pool.reserve()
        self.down.worker.spawn(self._connect(pool))

    async def _connect(self, pool: Pool) -> None:
        try:
            conn = await pool.connect(self.down.limits.connect_timeout)
        except TimeoutError:
            if self.stats is not None:
                self.stats.timeouts += 1
            if not self.failed_try():
                self.fail(504, f"timed out connecting to upstream {pool.address}")
            return
        except ssl.SSLError as exc:
            if self.stats is not None:
                self.stats.connect_errors += 1
            # Said once per failed connect: the operator needs the reason, the client only gets a 502.
            log.warning("TLS to upstream %s failed: %s", pool.address, exc)
            if not self.failed_try():
                self.fail(502, f"TLS to upstream {pool.address} failed")
            return
        except OSError as exc:
            if self.stats is not None:
                self.stats.connect_errors += 1
            if not self.failed_try():
                self.fail(502, f"cannot connect to upstream {pool.address}: {exc.strerror or exc}")
            return
        if self.wants_connection():
            self.attach(conn, reused=False)
        else:
            pool.release(conn, self.down.worker.now)

    def attach(self, conn: UpstreamConnection, reused: bool) -> None:
        down = self.down
        self.conn = conn
        self.reused = reused
        conn.exchange = self
        conn.deadline = down.worker.now + down.limits.read_timeout
        if down.write_paused:
            conn.set_reading(False)
        if self.pending:
            conn.transport.write(b"".join([self.head, *self.pending]))
            self.pending = []
            self.pending_bytes = 0
            down.pause_for_buffer(False)
        else:
            conn.transport.write(self.head)

    def failed_try(self) -> bool:
        """This endpoint failed the request (nothing reached the client): count it against the
        endpoint, and retry on another endpoint of the same version if the policy and budget allow.
        Connect failures retry any request (nothing was sent); answers retry only idempotent,
        bodiless requests (``on_status``)."""
        route, target = self.route, self.target
        if route is None or target is None or self.finished:
            return False
        worker = self.down.worker
        self.count_failure(route, target)
        if self.attempts >= route.retries.attempts or self.response_started:
            return False
        self.tried.add(target.address)
        other = route.pick(worker.health.down | self.tried)
        if other is None or not worker.budget.allow(route.retries.budget_percent, len(worker.downstreams)):
            return False
        self.attempts += 1
        if self.stats is not None:
            self.stats.retries += 1
        self.target, self.conn, self.reused = other, None, False
        self.connect_upstream()
        return True

    def count_failure(self, route: VersionRoute, target: Target) -> None:
        """A failed try counts against its endpoint (passive health), and may eject it."""
        worker = self.down.worker
        if worker.health.failure(target.address, route.addresses, route.outlier, worker.now, route.where) \
                and self.stats:
            self.stats.ejections += 1

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.count()
            self.down.exchange_finished(self)

    def count(self) -> None:
        worker = self.down.worker
        if self.attempts:
            worker.budget.finished(self.attempts)
        if self.log_fields is not None and worker.access_log is not None:
            worker.access_log.record({
                **self.log_fields, "status": self.status, "bytes": self.sent,
                "duration_ms": round((monotonic() - self.born) * 1000, 3),
                "upstream": self.target.address if self.target is not None else None,
            })
        stats = self.stats
        if stats is not None:
            stats.record(self.status, monotonic() - self.born)
        else:
            self.down.worker.stats.unrouted[self.status // 100 if 100 <= self.status < 600 else 0] += 1

    def cancel(self) -> None:
        """The client went away: drop the upstream connection, which is mid-exchange and unusable."""
        self.cancelled = True
        if not self.finished:
            self.status = 0
            self.count()
        self.finished = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            if conn.tunnel is None:
                conn.transport.abort()

    def fail(self, status: int, message: str) -> None:
        """The upstream side failed: answer with ``status`` if nothing was sent yet, else abort."""
        if self.finished:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            conn.transport.abort()
        down = self.down
        if self.response_started:
            self.finished = True
            self.status = 0  # the client saw a cut response: counted as aborted, whatever began
            self.count()
            down.abort()
            return
        self.response_started = True
        self.status = status
        close = not self.request_done or self.upgrade
        down.write(local_response(status, message, close, head_only=self.head_request))
        self.close_after = self.close_after or close
        self.finish()

    # ------------------------------------------------------------------ response side (from upstream)

    def upstream_progress(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.deadline = self.down.worker.now + self.down.limits.read_timeout

    def response_interim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """1xx other than 101: relay to HTTP/1.1 clients (100 only to clients that asked for it)."""
        if not self.http11 or (status == 100 and not self.expect_continue):
            return
        out = [status_line(status, reason)]
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                out += (name, b": ", value, CRLF)
        out.append(CRLF)
        self.down.out.extend(out)

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if status == 101 and not self.upgrade:
            self.fail(502, "upstream switched protocols without being asked")
            return
        route, target = self.route, self.target
        if route is not None and target is not None:
            if status < 500:
                self.down.worker.health.success(target.address)
            elif status in route.retries.on_status and self.retryable and self.attempts < route.retries.attempts:
                self.discarding = True  # read this answer to its end, drop it, then try another endpoint
                return
            else:
                self.failed_try()  # counts against the endpoint; the answer itself goes to the client
        self.response_started = True
        self.status = status
        lines: list[bytes] = []
        tokens: AbstractSet[bytes] | None = None
        length: bytes | None = None
        chunked = False
        upgrade = b""
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"connection":
                    tokens = connection_tokens(value) if tokens is None else tokens | connection_tokens(value)
                elif lname == b"content-length":
                    length = value
                elif lname == b"transfer-encoding":
                    chunked = True
                elif lname == b"upgrade":
                    upgrade = value
                continue
            lines += (name, b": ", value, CRLF)
        if tokens is not None and not tokens <= PLAIN_TOKENS:
            lines = [piece for name, value in headers if (lname := name.lower()) not in HOP_BY_HOP
                     and lname not in tokens for piece in (name, b": ", value, CRLF)]
        down = self.down
        close = (
            not self.client_keep_alive
            or down.closing
            or not self.request_done
            or (self.upgrade and status != 101)  # the client's parser is past the point of return
        )
        out = down.out
        out.append(status_line(status, reason))
        out += lines
        if self.set_cookie:
            out.append(self.set_cookie)
        if status == 101:
            out += (b"Connection: upgrade\r\nUpgrade: ", upgrade, CRLF, CRLF)
            return
        if self.head_request or status in _NO_BODY_STATUSES:
            # A HEAD or 304 answer keeps the Content-Length the full response would have had.
            self.framing = NO_BODY
            if length is not None and status != 204:
                out += (b"Content-Length: ", length, CRLF)
        elif length is not None:
            self.framing = LENGTH
            if not chunked and len(length) > 4:  # only what may reach upstream.STREAM_FROM is converted
                self.stream_length = int(length)
            out += (b"Content-Length: ", length, CRLF)
        elif self.http11:
            self.framing = CHUNKED
            self.upstream_until_close = not chunked
            out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.framing = UNTIL_CLOSE
            self.upstream_until_close = not chunked
            close = True
        if close:
            out.append(b"Connection: close\r\n")
        elif not self.http11:
            out.append(b"Connection: keep-alive\r\n")
        out.append(CRLF)
        self.close_after = self.close_after or close

    def response_body(self, data: bytes | memoryview) -> None:
        if self.discarding:
            return
        size = len(data)
        self.sent += size
        down = self.down
        if size >= LARGE_PIECE:
            down.large = True
        if self.framing == CHUNKED:
            down.out.extend(chunk(data))
        elif self.framing != NO_BODY:
            down.out.append(data)

    def response_done(self) -> None:
        """The upstream finished the response (its connection is already back in the pool or closed)."""
        if self.finished:
            return
        self.conn = None
        if self.discarding:
            self.discarding = False
            if not self.failed_try():  # no other endpoint or no budget left: a plain 502 then
                self.fail(502, "upstream answered with an error and no other endpoint could take the request")
            return
        if self.framing == CHUNKED:
            self.down.out.append(LAST_CHUNK)
        self.down.flush()
        self.response_complete = True
        self.finish()

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The upstream answered 101: from here on bytes flow unparsed both ways."""
        conn.done = False
        conn.deadline = float("inf")
        self.down.start_tunnel(conn, rest)

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if self.finished:
            return
        self.conn = None
        if not self.response_started:
            if self.reused and self.retryable and not self.retried:
                # A pooled connection the upstream had already closed: safe to try once on a new one.
                self.retried = True
                if self.stats is not None:
                    self.stats.retries += 1
                self.open_connection(conn.pool)
                return
            if self.discarding:
                self.discarding = False
            if not self.failed_try():
                self.fail(502, f"upstream {conn.pool.address} closed the connection before answering")
        elif self.upstream_until_close and not conn.done:
            self.response_done()  # the body ended with the connection, as its framing said it would
        else:
            self.finished = True
            self.status = 0
            self.count()
            self.down.abort()

    def upstream_timeout(self) -> None:
        if self.stats is not None:
            self.stats.timeouts += 1
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            conn.transport.abort()
        # A read timeout may follow a request the upstream is still acting on: count it, never retry it.
        if self.route is not None and self.target is not None:
            self.count_failure(self.route, self.target)
        self.fail(504, "upstream timed out")
