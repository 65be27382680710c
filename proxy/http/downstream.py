"""The client side of the hot path: one ``Downstream`` per client connection, an httptools request
parser, and the checks that keep malformed or ambiguous requests away from upstreams.

httptools (llhttp) already rejects CL+TE, duplicate or signed Content-Length, bad chunk sizes,
obs-fold, bare LF and bad header characters. On top of that we reject HTTP/0.9 and HTTP/2 preface
lines, duplicate or (in HTTP/1.1) missing Host, oversize heads, CONNECT and odd request targets.
Every rejection is answered here, with the connection closed, before any upstream is chosen.

What the upstream receives is rebuilt, never copied: the request line with the raw target bytes (the
same bytes routing looked at), Host, the end-to-end headers, X-Forwarded-*, and framing headers we
compute. Hop-by-hop headers and every header the Connection header names are dropped.

Deadlines are attributes compared by the worker's sweeper (``Worker.tick``), not timers: arming a
timer per request would cost more than the check does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from turnout.core.match import Request
from turnout.core.routing import normalise_host

from .exchange import PENDING_LIMIT, Exchange
from .head import end_to_end, read_fields, request_target, sticky_cookie, upstream_head
from .http1 import Reject, local_response

if TYPE_CHECKING:
    from turnout.core.stats import VersionStats

    from .context import ListenerView, ServingContext
    from .upstream import UpstreamConnection

__all__ = ["Downstream"]

# What a deadline means when it passes.
NONE: Final = 0
HEADERS: Final = 1
BODY: Final = 2
IDLE: Final = 3
POOL: Final = 4
DRAIN: Final = 5
NEVER: Final = float("inf")
LINGER: Final = 2.0  # seconds a closing connection keeps reading (and discarding) after its last response
# At a drain, an idle keep-alive connection stays open this long: a request already on its way is
# answered (with Connection: close) instead of meeting a closed connection; then it is half-closed.
DRAIN_IDLE: Final = 1.0

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_METHODS: Final[dict[bytes, str]] = {}
# Host header -> lookup key. Clients send few distinct Host values, so normalising each once saves
# several string operations per request; bounded, so that a client inventing hosts cannot grow it.
_HOSTS: Final[dict[str, str]] = {}
_HOSTS_KEPT: Final = 4096


class Downstream(asyncio.Protocol):
    __slots__ = (
        "body_bytes",
        "body_started",
        "buffer_paused",
        "client_ip",
        "client_ip_bytes",
        "closing",
        "dead",
        "deadline",
        "deadline_kind",
        "header_bytes",
        "headers",
        "in_head",
        "incoming",
        "large",
        "limits",
        "listening",
        "out",
        "parser",
        "queue",
        "reading",
        "transport",
        "tunnel",
        "upgrading",
        "upstream_paused",
        "url",
        "worker",
        "write_paused",
    )

    def __init__(self, worker: ServingContext, listening: ListenerView) -> None:
        self.worker = worker
        self.listening = listening
        self.limits = worker.limits
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.in_head = False
        self.queue: deque[Exchange] = deque()
        self.incoming: Exchange | None = None
        self.upgrading: Exchange | None = None
        self.tunnel: UpstreamConnection | None = None
        self.out: list[bytes | memoryview] = []  # memoryview: a streamed body's part of a read
        self.large = False  # ``out`` holds a piece too big to copy into one joined write
        self.deadline = NEVER
        self.deadline_kind = NONE
        self.reading = True
        self.upstream_paused = False
        self.buffer_paused = False
        self.write_paused = False
        self.body_started = 0.0  # when the request body began, and how much of it came since
        self.body_bytes = 0
        self.closing = False
        self.dead = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        worker = self.worker
        if len(worker.downstreams) >= self.limits.max_connections:
            self.dead = True
            self.transport.write(local_response(503, "too many connections", close=True))
            self.transport.close()
            return
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = peer[0]
            self.client_ip_bytes = self.client_ip.encode()
        clients = worker.clients
        held = clients.get(self.client_ip, 0)
        if held >= self.limits.max_connections_per_client:
            # One address cannot take every connection slot (idle sockets, slow bodies).
            self.dead = True
            self.transport.write(local_response(503, "too many connections from this address", close=True))
            self.transport.close()
            return
        clients[self.client_ip] = held + 1
        worker.downstreams.add(self)
        self.set_deadline(HEADERS, self.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.upgrading is not None:  # bytes after an upgrade request, before the upstream agreed
            exchange = self.upgrading
            exchange.pending.append(data)
            exchange.pending_bytes += len(data)
            if exchange.pending_bytes > PENDING_LIMIT:
                self.pause_for_buffer(True)
            return
        if self.dead:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.after_upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, Reject):
                raise
            self.reject(cause.status, cause.reason)
            return
        except httptools.HttpParserError as exc:
            self.reject(400, f"malformed request: {exc}")
            return
        # Exchanges start only after the whole read was parsed: a request that turns out malformed
        # later in the same read never reaches an upstream, and its head and body leave in one write.
        self.start_next()

    def connection_lost(self, exc: Exception | None) -> None:
        worker = self.worker
        if self in worker.downstreams:
            worker.downstreams.discard(self)
            held = worker.clients.get(self.client_ip, 1) - 1
            if held > 0:
                worker.clients[self.client_ip] = held
            else:
                worker.clients.pop(self.client_ip, None)
        self.dead = True
        while self.queue:
            self.queue.popleft().cancel()
        if self.incoming is not None:
            self.incoming.cancel()
        if self.tunnel is not None:
            self.tunnel.transport.close()
            self.tunnel = None

    def pause_writing(self) -> None:
        self.write_paused = True
        self._upstream_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.body_started = 0.0  # when the request body began, and how much of it came since
        self.body_bytes = 0
        self._upstream_reading(True)

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self.in_head = True
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        if self.deadline_kind != HEADERS:
            self.set_deadline(HEADERS, self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.limits.max_header_bytes:
            raise Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.incoming is not None:
            return  # a trailer field: dropped, we only ever promise TE: trailers end to end
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.limits.max_header_bytes:
            raise Reject(431, "request header fields too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        # Counted once per request, not per field: max_header_bytes already bounds what piles up.
        if len(self.headers) > self.limits.max_header_count:
            raise Reject(431, "too many request header fields")
        exchange = self.prepare()
        self.incoming = exchange
        self.set_deadline(BODY, self.limits.body_idle_timeout)
        self.body_started, self.body_bytes = self.worker.now, 0
        self.enqueue(exchange)

    def on_body(self, body: bytes) -> None:
        exchange = self.incoming
        if exchange is not None:
            limits = self.limits
            self.body_bytes += len(body)
            deadline = self.worker.now + limits.body_idle_timeout
            if limits.min_body_rate:
                # After the first body_idle_timeout, the body must average min_body_rate bytes/s: a byte
                # every few seconds resets the idle deadline, never this one.
                deadline = min(deadline, self.body_started + limits.body_idle_timeout
                               + self.body_bytes / limits.min_body_rate)
            self.deadline = deadline
            exchange.request_body(body)

    def on_message_complete(self) -> None:
        exchange, self.incoming = self.incoming, None
        if self.deadline_kind == BODY:
            self.set_deadline(NONE, 0)
        if exchange is not None:
            exchange.request_end()

    # ------------------------------------------------------------------ the request

    def prepare(self) -> Exchange:
        """Validate the head, route it, and build the upstream request head (the steps are the pure
        functions of ``head``; this method only runs them in order on one snapshot)."""
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise Reject(400, f"HTTP/{version} is not supported")
        http11 = version == "1.1"
        method = parser.get_method()
        if method == b"CONNECT":
            raise Reject(405, "CONNECT is not supported")
        state = self.worker.state  # one snapshot for the whole decision
        fields = read_fields(self.headers, state.header_names)
        if fields.chunked and not http11:
            raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1)")
        target, host = request_target(self.url, method, fields.host)
        if host is None:
            if http11:
                raise Reject(400, "missing Host header")
            host = b""
        host_text = host.decode("latin-1")
        routing_fields = fields.routing
        routing_fields["host"] = host_text
        path, _, query = target.partition(b"?")
        path_text = path.decode("latin-1")

        has_body = fields.chunked or (fields.length is not None and int(fields.length) > 0)
        keep_alive = parser.should_keep_alive()
        close = not keep_alive or (fields.expect_continue and has_body)
        head_request = method == b"HEAD"
        if self.listening.redirect_https is not None:
            return self.redirect(host, target, close, head_request)
        worker = self.worker
        lookup = _HOSTS.get(host_text)
        if lookup is None:
            lookup = normalise_host(host_text)
            if len(_HOSTS) < _HOSTS_KEPT:
                _HOSTS[host_text] = lookup
        service = state.find(lookup, path_text)
        if service is None:
            return self.local_exchange(404, f"no service for host {host_text!r} and path {path_text!r}",
                                       close, head_request)
        method_text = _METHODS.get(method) or _METHODS.setdefault(method, method.decode("latin-1"))
        request = Request(method_text, path_text, query.decode("latin-1"), routing_fields, self.client_ip)
        decision = service.decide(request, worker.draw)
        stats = worker.version_stats.get(decision.version)
        endpoint = decision.version.pick(worker.health.down)
        if endpoint is None:
            # Never another version: this version's share is answered here (invariant: health acts
            # inside a version, never moves traffic between versions).
            what = "no healthy endpoint" if decision.version.endpoints else "no endpoint"
            return self.local_exchange(
                503, f"{what} for version {decision.version.name!r} of service {service.name!r}",
                close, head_request, stats=stats,
            )

        tokens = fields.tokens
        forward_upgrade = bool(fields.upgrade) and tokens is not None and b"upgrade" in tokens \
            and not fields.upgrade.lower().startswith(b"h2c")
        lines = fields.lines
        set_cookie = b""
        sticky = decision.sticky if decision.assigned_key is not None else None
        inject = service.config.inject_flags
        spoofed = inject is not None and inject.header in routing_fields
        if sticky is not None or spoofed:  # lines the proxy replaces: never pass on a client's own flags
            skip = {b"cookie"} if sticky is not None else set()
            if spoofed:
                skip.add(service.inject_header)
            lines = end_to_end(self.headers, tokens or set(), skip)
        if sticky is not None and decision.assigned_key is not None:
            cookie_line, set_cookie = sticky_cookie(self.headers, sticky, decision.assigned_key)
            lines += cookie_line
        if service.injection is not None:
            flag_key = decision.assigned_key or (service.flag_key(request) if service.flag_key else None)
            injected = service.injection.header(flag_key, request)
            worker.stats.injected[injected] += 1
            lines += (service.inject_header, b": ", injected, b"\r\n")
        exchange = Exchange(
            self,
            head=upstream_head(method, target, host, fields, lines, self.client_ip_bytes, self.listening.scheme,
                               forward_upgrade),
            target=endpoint,
            chunked=fields.chunked,
            head_request=head_request,
            client_keep_alive=keep_alive,
            http11=http11,
            upgrade=forward_upgrade,
            retryable=method in IDEMPOTENT and not has_body,
            expect_continue=fields.expect_continue,
            set_cookie=set_cookie,
            stats=stats,
            route=decision.version,
        )
        if worker.access_log is not None:
            exchange.log_fields = {"service": service.name, "version": decision.version.name, "rule": decision.rule,
                                   "bucket": decision.bucket, "method": method_text, "path": path_text,
                                   "generation": state.generation}
        return exchange

    def local_exchange(self, status: int, message: str, close: bool, head_request: bool,
                       extra: bytes = b"", stats: VersionStats | None = None) -> Exchange:
        response = local_response(status, message, close, head_only=head_request, extra=extra)
        return Exchange(self, local=response, close_after=close, http11=True, status=status, stats=stats)

    def redirect(self, host: bytes, target: bytes, close: bool, head_request: bool) -> Exchange:
        """A redirecting listener: 308 (method and body kept by the client) to the same host and
        target on https, on the configured port."""
        port = self.listening.redirect_https
        name = normalise_host(host.decode("latin-1"))
        if not name:
            return self.local_exchange(400, "cannot redirect without a Host", True, head_request)
        authority = name if port == 443 else f"{name}:{port}"
        location = f"https://{authority}".encode("latin-1") + target
        return self.local_exchange(308, "use https", close, head_request, extra=b"Location: " + location + b"\r\n")

    # ------------------------------------------------------------------ exchanges in order

    def enqueue(self, exchange: Exchange) -> None:
        self.queue.append(exchange)

    def start_next(self) -> None:
        if self.queue and not self.queue[0].started:
            self.queue[0].start()

    def exchange_finished(self, exchange: Exchange) -> None:
        queue = self.queue
        if queue and queue[0] is exchange:
            queue.popleft()
        self.flush()
        self.upstream_paused = False
        self.buffer_paused = False
        if exchange.close_after or (self.closing and not queue):
            self.close_lingering()
            return
        self._update_reading()
        if queue:
            self.start_next()
        elif self.incoming is None and self.deadline_kind != HEADERS:
            self.set_deadline(IDLE, self.limits.keepalive_timeout)

    def after_upgrade(self, rest: bytes) -> None:
        """The parser stopped at an upgrade. Either we forward it (tunnel once the upstream agrees),
        or it was h2c, which we strip: then the connection simply continues as HTTP/1.1."""
        last = self.queue[-1] if self.queue else None
        if last is not None and last.upgrade:
            self.upgrading = last
            if rest:
                last.pending.append(rest)
            self.set_deadline(NONE, 0)
            return
        self.parser = httptools.HttpRequestParser(self)
        if rest:
            self.data_received(rest)

    def start_tunnel(self, conn: UpstreamConnection, rest: bytes) -> None:
        exchange = self.upgrading
        self.upgrading = None
        self.tunnel = conn
        conn.tunnel = self.transport
        if exchange is not None:
            self.queue.clear()
            exchange.count()  # a tunnel is counted when it opens: its 101 and the time to it
            exchange.finished = True
            if exchange.pending:
                conn.transport.write(b"".join(exchange.pending))
                exchange.pending = []
                self.pause_for_buffer(False)
        self.flush()
        if rest:
            self.transport.write(rest)
        self.set_deadline(NONE, 0)

    # ------------------------------------------------------------------ output and flow control

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self.flush()

    def flush(self) -> None:
        out = self.out
        if out:
            if not self.transport.is_closing():
                if self.large:
                    # One vectored write (uvloop: writev) instead of copying a large body into a joined
                    # buffer; small pieces are cheaper joined than passed as buffers of their own.
                    self.transport.writelines(out)
                else:
                    self.transport.write(b"".join(out))
            self.large = False
            out.clear()

    def reject(self, status: int, reason: str) -> None:
        """Answer a request we refuse to forward, after any earlier responses, then close."""
        self.dead = True
        incoming, self.incoming = self.incoming, None
        if incoming is not None and incoming.started:
            incoming.fail(status, reason)  # its head is already upstream: cut that off too
            return
        if incoming is not None and incoming in self.queue:
            self.queue.remove(incoming)
        self.enqueue(Exchange(self, local=local_response(status, reason, close=True), close_after=True,
                              status=status))
        self.start_next()

    def close_lingering(self) -> None:
        """Close after a response without losing it: half-close our side and discard what the
        client still sends for a moment. Closing at once would make the kernel answer the client's
        unread bytes with a reset, and the client could lose the response (nginx's lingering close)."""
        self.dead = True
        self.flush()
        transport = self.transport
        if transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.upstream_paused = self.buffer_paused = False
        self._update_reading()
        self.set_deadline(IDLE, LINGER)

    def abort(self) -> None:
        self.dead = True
        self.out.clear()
        self.transport.abort()

    def pause_for_upstream(self, paused: bool) -> None:
        self.upstream_paused = paused
        self._update_reading()

    def pause_for_buffer(self, paused: bool) -> None:
        self.buffer_paused = paused
        self._update_reading()

    def _update_reading(self) -> None:
        want = not (self.upstream_paused or self.buffer_paused)
        if want != self.reading and not self.transport.is_closing():
            self.reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _upstream_reading(self, on: bool) -> None:
        conn = self.tunnel
        if conn is None and self.queue:
            conn = self.queue[0].conn
        if conn is not None:
            conn.set_reading(on)

    # ------------------------------------------------------------------ deadlines

    def set_deadline(self, kind: int, seconds: float) -> None:
        self.deadline_kind = kind
        self.deadline = NEVER if kind == NONE else self.worker.now + seconds

    def wait_for_pool(self) -> None:
        self.set_deadline(POOL, self.limits.connect_timeout)

    def expire(self, now: float) -> None:
        """Called by the sweeper when ``deadline`` has passed."""
        kind = self.deadline_kind
        self.set_deadline(NONE, 0)
        if kind == IDLE:
            self.transport.close()
        elif kind == HEADERS:
            if self.queue:  # an earlier response is still on its way; the next head is just late
                self.abort()
            else:
                self.reject(408, "request header timeout")
        elif kind == BODY:
            active = self.queue[0] if self.queue else None
            if active is not None and active.response_started:
                self.abort()
            elif active is not None:
                active.fail(408, "request body timeout")
                self.abort()
            else:
                self.reject(408, "request body timeout")
        elif kind == POOL and self.queue:
            self.queue[0].fail(503, "no upstream connection available")
        elif kind == DRAIN:
            self.close_lingering()

    def check_upstream(self, now: float) -> None:
        if self.queue:
            active = self.queue[0]
            conn = active.conn
            if conn is not None and conn.deadline <= now:
                active.upstream_timeout()

    def drain(self) -> None:
        """Shutdown: close after the response in progress; an idle connection after ``DRAIN_IDLE``, so
        that a request already on the wire is answered (``Connection: close``), then half-closed."""
        self.closing = True
        busy = self.queue or self.in_head or self.incoming or self.tunnel or self.upgrading
        if not busy:
            self.set_deadline(DRAIN, DRAIN_IDLE)
