"""The hot path on in-memory transports, the sweeper driven by hand (``Worker.tick(now)``): every
deadline fires when it should and not before, and never because real time passed (uvicorn's
``tests/protocols/test_http.py`` is the model)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.http.downstream import Downstream
from proxy.http.upstream import UpstreamConnection
from proxy.worker import Worker
from turnout.core import reader

CONFIG = """
listen: 127.0.0.1:0
limits: {header_timeout: 10s, body_idle_timeout: 20s, keepalive_timeout: 30s, read_timeout: 40s}
services:
  shop:
    versions: {v1: [127.0.0.1:19101]}
    version: v1
"""
HEAD = b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Transport:
    """An in-memory transport that remembers what the protocol did to it."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = self.aborted = self.eof = False

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, pieces: list[bytes]) -> None:
        self.written += b"".join(pieces)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else None

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Setup:
    """A worker that never starts (no sockets, no loop), one client connection, one pooled upstream."""

    def __init__(self) -> None:
        self.worker = Worker(reader.parse(CONFIG, "t.yaml"))
        self.worker.now = 1000.0
        self.client = Transport()
        self.down = Downstream(self.worker, self.worker.listeners["http"])
        self.down.connection_made(self.client)  # type: ignore[arg-type]
        pool = self.worker.pool(self.worker.state.services["shop"].versions["v1"].endpoints[0])
        self.upstream = Transport()
        self.conn = UpstreamConnection(pool)
        self.conn.connection_made(self.upstream)  # type: ignore[arg-type]
        pool.open += 1
        pool.idle.append(self.conn)

    def tick(self, seconds: float) -> None:
        self.worker.tick(self.worker.now + seconds)

    def status(self) -> int:
        return int(self.client.written.split(b" ", 2)[1])


@pytest.fixture
def setup() -> Setup:
    return Setup()


def test_an_unfinished_head_gets_408_at_the_header_deadline(setup: Setup) -> None:
    setup.down.data_received(b"GET / HTTP/1.1\r\nHost: sh")
    setup.tick(9.9)
    assert setup.client.written == b""
    setup.tick(0.2)
    assert setup.status() == 408 and b"request header timeout" in setup.client.written
    assert setup.upstream.written == b""  # never reached an upstream


def test_a_stalled_body_gets_408_at_the_body_idle_deadline_and_each_byte_resets_it(setup: Setup) -> None:
    from dataclasses import replace

    setup.down.limits = replace(setup.down.limits, min_body_rate=0)  # the idle deadline alone
    setup.down.data_received(b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 10\r\n\r\nab")
    setup.tick(19.0)
    setup.down.data_received(b"cd")  # progress: the deadline starts again from now
    setup.tick(19.0)
    assert setup.client.written == b""  # 38 s since the head, 19 s since the last byte: no answer yet
    assert setup.upstream.written.endswith(b"abcd")  # the body streams through as it comes
    setup.tick(1.1)
    assert setup.status() == 408 and setup.client.aborted


def test_an_idle_keep_alive_connection_closes_at_the_keepalive_deadline(setup: Setup) -> None:
    setup.down.data_received(HEAD)
    setup.conn.data_received(ANSWER)
    assert setup.status() == 200 and not setup.client.closed
    setup.tick(29.9)
    assert not setup.client.closed
    setup.tick(0.2)
    assert setup.client.closed


def test_an_upstream_that_never_answers_gets_504_at_the_read_deadline(setup: Setup) -> None:
    setup.down.data_received(HEAD)
    assert setup.upstream.written.startswith(b"GET / HTTP/1.1\r\nHost: shop\r\n")
    for _ in range(399):  # 39.9 s of sweeper ticks: nothing yet
        setup.tick(0.1)
    assert setup.client.written == b""
    setup.tick(0.2)
    assert setup.status() == 504


def _client(worker: Worker) -> tuple[Downstream, Transport]:
    transport = Transport()
    down = Downstream(worker, worker.listeners["http"])
    down.connection_made(transport)  # type: ignore[arg-type]
    return down, transport


def _upstream(worker: Worker) -> tuple[UpstreamConnection, Transport]:
    pool = worker.pool(worker.state.services["shop"].versions["v1"].endpoints[0])
    transport = Transport()
    conn = UpstreamConnection(pool)
    conn.connection_made(transport)  # type: ignore[arg-type]
    pool.open += 1
    pool.idle.append(conn)
    return conn, transport


@pytest.mark.parametrize("reader_state", ["paused", "finished"])
def test_the_read_deadline_fires_on_time_whatever_another_client_did(setup: Setup, reader_state: str) -> None:
    """A slow client reading a long chunked response (its writes paused, its upstream paused), then
    another client whose upstream never answers: that one's 504 comes at read_timeout, not later."""
    slow, slow_client = setup.down, setup.client
    slow.data_received(HEAD)
    setup.conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    slow.pause_writing()
    for _ in range(50):  # a long response trickling out while the client does not read
        setup.conn.data_received(b"400\r\n" + b"x" * 1024 + b"\r\n")
        setup.tick(0.1)
    if reader_state == "finished":
        slow.resume_writing()
        setup.conn.data_received(b"0\r\n\r\n")
        assert slow_client.written.endswith(b"0\r\n\r\n")
    # The second client: its request reaches an upstream that never answers (the first one is busy or
    # idle again in the pool; either may be picked).
    _, second_upstream = _upstream(setup.worker)
    other, other_client = _client(setup.worker)
    other.data_received(HEAD)
    assert setup.upstream.written.count(b"GET /") + second_upstream.written.count(b"GET /") == 2
    for _ in range(399):
        setup.tick(0.1)
    assert other_client.written == b""
    setup.tick(0.2)
    assert other_client.written.split(b" ", 2)[1] == b"504"


def test_at_a_drain_an_idle_connection_answers_a_request_on_its_way_then_half_closes(setup: Setup) -> None:
    setup.down.data_received(HEAD)
    setup.conn.data_received(ANSWER)
    assert b"Connection: close" not in setup.client.written
    setup.down.drain()
    setup.tick(0.5)
    assert not setup.client.eof and not setup.client.closed  # still open: a request may be on its way
    setup.down.data_received(HEAD)  # it arrives: answered, and told the connection ends
    setup.conn.data_received(ANSWER)
    last = setup.client.written.rsplit(b"HTTP/1.1 ", 1)[1]
    assert last.startswith(b"200") and b"connection: close" in last.lower()
    assert setup.client.eof and not setup.client.aborted  # half-closed, never reset
    idle = Setup()
    idle.down.drain()
    idle.tick(0.9)
    assert not idle.client.eof
    idle.tick(0.2)
    assert idle.client.eof and not idle.client.aborted  # no request came: half-closed at DRAIN_IDLE


def test_a_body_trickling_a_byte_every_two_seconds_is_cut_by_the_minimum_rate(setup: Setup) -> None:
    setup.down.data_received(b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(20):  # 40 s: each byte comes well within body_idle_timeout (20 s)
        setup.tick(2.0)
        setup.down.data_received(b"x")
        if setup.client.written:
            break
    # 512 B/s after the first 20 s: a trickle of 0.5 B/s is cut soon after that grace, not at 40 s or never.
    assert setup.status() == 408 and setup.worker.now - 1000.0 <= 22.5


def test_a_steady_body_is_never_cut_by_the_rate(setup: Setup) -> None:
    setup.down.data_received(b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(50):  # 1 KiB every second for 50 s: twice the minimum rate
        setup.tick(1.0)
        setup.down.data_received(b"x" * 1024)
    assert setup.client.written == b""


def test_one_address_cannot_take_every_connection() -> None:
    capped = CONFIG.replace("read_timeout: 40s}", "read_timeout: 40s, max_connections_per_client: 3}")
    worker = Worker(reader.parse(capped, "t.yaml"))
    clients = []
    for _ in range(4):
        transport = Transport()
        down = Downstream(worker, worker.listeners["http"])
        down.connection_made(transport)  # type: ignore[arg-type]
        clients.append((down, transport))
    assert [t.closed for _, t in clients] == [False, False, False, True]
    assert b"503" in clients[3][1].written and b"too many connections from this address" in clients[3][1].written
    clients[0][0].connection_lost(None)  # one closes: the address may open another
    again = Transport()
    Downstream(worker, worker.listeners["http"]).connection_made(again)  # type: ignore[arg-type]
    assert not again.closed and worker.clients == {"127.0.0.1": 3}
