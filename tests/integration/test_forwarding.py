"""Forwarding through real sockets: framing, hop-by-hop headers, X-Forwarded-*, upgrades, errors."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp
import pytest

from ..helpers import RawUpstream, parse_response, raw_exchange, service


def one_version(address: str) -> dict[str, object]:
    return {"s": service({"v1": [address]}, version="v1")}


async def test_chunked_request_and_response(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address))
    parts = [b"a" * 1000, b"b" * 70_000, b"c"]

    async def body():
        for part in parts:
            yield part

    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{worker.port}/upload", data=body()) as response:
            echoed = await response.json()
        assert echoed["body_size"] == sum(map(len, parts))
        assert echoed["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
        assert ["Transfer-Encoding", "chunked"] in echoed["headers"]
        async with session.get(f"http://127.0.0.1:{worker.port}/chunked") as response:
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert await response.text() == "part0;part1;part2;part3;part4;"


async def test_hop_by_hop_and_connection_listed_headers_are_dropped_both_ways(proxy) -> None:
    raw = await RawUpstream(
        b"HTTP/1.1 200 OK\r\nConnection: X-Internal, keep-alive\r\nX-Internal: secret\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nX-Kept: yes\r\n"
        b"Content-Length: 2\r\n\r\nok"
    ).start()
    worker = await proxy(one_version(raw.address))
    data = await raw_exchange(worker.port, (
        b"GET /p HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers, deflate\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nX-End-To-End: kept\r\nConnection: close\r\n\r\n"
    ))
    status, headers, body = parse_response(data)
    assert (status, body) == (200, b"ok")
    assert headers["x-kept"] == "yes"
    for name in ("x-internal", "keep-alive", "proxy-connection", "trailer"):
        assert name not in headers
    sent = raw.received[0].lower()
    assert b"x-end-to-end: kept" in sent
    assert b"te: trailers\r\n" in sent
    for dropped in (b"x-secret", b"keep-alive", b"proxy-connection", b"upgrade", b"http2-settings", b"deflate"):
        assert dropped not in sent, dropped
    await raw.stop()


async def test_x_forwarded_headers(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address))
    async with aiohttp.ClientSession() as session:
        headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "Host": "shop.test"}
        async with session.get(f"http://127.0.0.1:{worker.port}/", headers=headers) as response:
            seen = dict((k.lower(), v) for k, v in (await response.json())["headers"])
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"  # set by the proxy, never trusted from the client
    assert seen["x-forwarded-host"] == "shop.test"
    assert seen["host"] == "shop.test"
    assert "user-agent" in seen  # the client's own, passed through; the proxy adds none


async def test_raw_target_is_forwarded_byte_for_byte(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address))
    target = b"/a%2Fb/../c;x?q=%20&q=%zz&&empty="
    data = await raw_exchange(worker.port, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert parse_response(data)[0] == 200
    assert up.seen[0]["path_qs"] == target.decode()


async def test_absolute_form_target_is_normalised(upstreams, proxy) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    worker = await proxy({
        "a": {"hosts": ["a.test"], "versions": {"v": [a.address]}, "version": "v"},
        "b": {"hosts": ["b.test"], "versions": {"v": [b.address]}, "version": "v"},
    })
    request = b"GET http://b.test/p?x=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    data = await raw_exchange(worker.port, request)
    assert parse_response(data)[0] == 200
    assert (len(a.seen), b.seen[0]["path_qs"]) == (0, "/p?x=1")
    assert ["Host", "b.test"] in b.seen[0]["headers"]


async def test_websocket_through_the_proxy(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{worker.port}/ws") as ws:
        for i in range(20):
            await ws.send_str(f"hello {i}")
            assert (await ws.receive_str()) == f"v1:hello {i}"
        await ws.send_bytes(b"\x00" * 100_000)
        assert await ws.receive_bytes() == b"\x00" * 100_000
    # The client closed; the proxy must close the upstream side too.
    for _ in range(50):
        if not worker.downstreams:
            break
        await asyncio.sleep(0.05)
    assert not worker.downstreams


async def test_head_keeps_content_length_and_the_upstream_connection(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address))
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(b"HEAD /big?size=12345 HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Content-Length: 12345" in head
    writer.write(b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), 3)
    status, _, body = parse_response(rest)  # the HEAD carried no body: the next bytes are a new response
    assert status == 200 and b'"/after"' in body
    writer.close()
    assert up.seen[0]["peer_port"] == up.seen[1]["peer_port"], "the upstream connection was reused"


async def test_keep_alive_reuses_upstream_connections(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address))
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(f"http://127.0.0.1:{worker.port}/") as response:
                await response.read()
    assert len({entry["peer_port"] for entry in up.seen}) == 1


class CountingUpstream:
    """Answers every request on a connection with a keep-alive 200 and notes each connection it saw
    closed by the proxy (EOF)."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed_by_peer = 0

    async def start(self) -> str:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.server = server
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"GET ")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                self.closed_by_peer += 1
        finally:
            writer.close()


@pytest.mark.parametrize(("timeout", "expect_closed"), [("300ms", 1), ("60s", 0)])
async def test_idle_upstream_connections_are_closed_after_the_idle_timeout(
        proxy, timeout: str, expect_closed: int) -> None:
    up = CountingUpstream()
    worker = await proxy(one_version(await up.start()), limits={"upstream_idle_timeout": timeout})
    url = f"http://127.0.0.1:{worker.port}/"
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(url) as response:
                assert await response.read() == b"ok"
        assert (up.connections, up.closed_by_peer) == (1, 0)  # reused while fresh
        await asyncio.sleep(1.0)
        assert up.closed_by_peer == expect_closed
        async with session.get(url) as response:
            assert await response.read() == b"ok"
        assert up.connections == 1 + expect_closed
    up.server.close()


async def test_expect_100_continue(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address))
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    status, headers, _ = parse_response(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3))
    assert status == 200
    body = await reader.readexactly(int(headers["content-length"]))
    assert b'"body_size": 5' in body
    writer.close()


async def test_http10_client(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address))
    data = await raw_exchange(worker.port, b"GET /chunked HTTP/1.0\r\n\r\n")
    status, headers, body = parse_response(data)
    # No chunked encoding for HTTP/1.0: the body is delimited by closing the connection.
    assert status == 200 and "transfer-encoding" not in headers and headers["connection"] == "close"
    assert body == b"part0;part1;part2;part3;part4;"
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = parse_response(await reader.readuntil(b"\r\n\r\n"))
    assert headers["connection"] == "keep-alive"
    await reader.readexactly(int(headers["content-length"]))
    writer.write(b"GET /two HTTP/1.0\r\n\r\n")
    assert parse_response(await asyncio.wait_for(reader.read(), 3))[0] == 200
    writer.close()


async def test_pipelined_requests_are_answered_in_order(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address))
    data = await raw_exchange(worker.port, (
        b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /third HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    ))
    first = data.index(b"slept v1")
    second = data.index(b'"/second"')
    third = data.index(b'"/third"')
    assert first < second < third


async def test_connect_failure_is_502_and_no_endpoint_is_503(upstreams, proxy) -> None:
    up = await upstreams("v2")
    unused = RawUpstream(b"")
    await unused.start()
    closed_address = unused.address
    await unused.stop()
    await asyncio.sleep(0.05)
    worker = await proxy({"s": service({"v1": [closed_address], "v2": [up.address], "v3": []}, rules=[
        {"name": "to-v3", "match": {"headers": {"x-v": "3"}}, "version": "v3"},
        {"name": "default", "version": "v1"},
    ])})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{worker.port}/") as response:
            assert response.status == 502
        async with session.get(f"http://127.0.0.1:{worker.port}/", headers={"X-V": "3"}) as response:
            assert response.status == 503  # never served by another version
    assert up.seen == []


async def test_upstream_timeout_is_504(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address), limits={"read_timeout": "300ms"})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{worker.port}/sleep?s=3") as response:
            assert response.status == 504
        async with session.get(f"http://127.0.0.1:{worker.port}/fine") as response:
            assert response.status == 200


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_upstream_dying_mid_body_aborts_the_client(proxy, reply: bytes) -> None:
    raw = await RawUpstream(reply).start()
    worker = await proxy(one_version(raw.address))
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{worker.port}/") as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    await raw.stop()


async def test_body_until_close_is_rechunked_for_http11_clients(proxy) -> None:
    raw = await RawUpstream(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").start()
    worker = await proxy(one_version(raw.address))
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{worker.port}/") as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert await response.read() == b"until the end"
    await raw.stop()


class AnswerOnceThenDrop:
    """Answers the first request on each connection and keeps it open, then closes it, unanswered,
    when a second request arrives: what a keep-alive upstream that timed out at the wrong moment does."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()


async def test_a_dead_pooled_connection_is_retried_only_for_safe_requests(proxy) -> None:
    upstream = AnswerOnceThenDrop()
    worker = await proxy(one_version(await upstream.start()))
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{worker.port}/"
        for _ in range(3):  # each later GET meets the dropped connection first, and is retried
            async with session.get(url) as response:
                assert (response.status, await response.read()) == (200, b"ok")
        assert upstream.connections == 3
        async with session.post(url, data=b"not idempotent") as response:
            assert response.status == 502  # never resent: the upstream may have acted on it
    assert upstream.server is not None
    upstream.server.close()


async def test_a_head_response_with_a_stray_body_does_not_poison_the_pool(proxy) -> None:
    raw = await RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", close=False).start()
    worker = await proxy(one_version(raw.address))
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert b"Content-Length: 5" in head
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    status, _, body = parse_response(await asyncio.wait_for(reader.read(), 3))
    assert (status, body) == (200, b"hello")  # not "hello" left over from the HEAD, a real answer
    assert len(raw.received) == 2  # on a new upstream connection each
    writer.close()
    await raw.stop()


async def test_h2c_upgrade_is_stripped_and_the_request_served(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address))
    data = await raw_exchange(worker.port, (
        b"GET /h2c HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    ))
    assert data.startswith(b"HTTP/1.1 200")
    assert b'"/next"' in data  # the connection carried on as HTTP/1.1
    sent = {name.lower() for name, _ in up.seen[0]["headers"]}
    assert not sent & {"upgrade", "http2-settings", "connection"}


async def test_pool_limit_queues_requests_and_bounds_the_wait(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy(one_version(up.address),
                         limits={"max_connections_per_endpoint": 1, "connect_timeout": "400ms"})
    url = f"http://127.0.0.1:{worker.port}/sleep"
    async with aiohttp.ClientSession() as a, aiohttp.ClientSession() as b:
        first, second = await asyncio.gather(a.get(url + "?s=0.1"), b.get(url + "?s=0.1"))
        assert (first.status, second.status) == (200, 200)  # the second waited for the one connection
        assert len({entry["peer_port"] for entry in up.seen}) == 1
        slow, starved = await asyncio.gather(a.get(url + "?s=1.5"), b.get(url + "?s=0"))
        assert (slow.status, starved.status) == (200, 503)


async def test_access_log_lines(upstreams, proxy, tmp_path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    log_path = tmp_path / "access.log"
    worker = await proxy({"s": service({"v1": [v1.address], "v2": [v2.address]}, split={"v1": 1, "v2": 1},
                                       sticky={"header": "x-user"})},
                         access_log={"path": str(log_path), "buffer_bytes": 0})
    async with aiohttp.ClientSession() as session:
        for user in ("ann", "bob"):
            async with session.get(f"http://127.0.0.1:{worker.port}/p?q=1", headers={"X-User": user}) as response:
                body = await response.read()
                version = response.headers["X-Version"]
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(lines) == 2
    last = lines[-1]
    assert {k: last[k] for k in ("service", "version", "rule", "method", "path", "status", "bytes", "generation")} \
        == {"service": "s", "version": version, "rule": "default", "method": "GET", "path": "/p", "status": 200,
            "bytes": len(body), "generation": 1}
    assert 0 <= last["bucket"] < 10_000 and last["duration_ms"] > 0 and last["upstream"] in (v1.address, v2.address)
    assert last["time"].endswith("Z")


class PiecesUpstream(RawUpstream):
    """Answers each request with ``pieces``, written one by one with a pause between them, so the proxy
    reads the response head in as many reads as there are pieces."""

    def __init__(self, *pieces: bytes) -> None:
        super().__init__(b"")
        self.pieces = pieces
        self.answer_twice = False  # answer a second request on the same connection too
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        for _ in range(2 if self.answer_twice else 1):
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            for piece in self.pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.02)
        await reader.read()


@pytest.mark.parametrize("split", [
    "head in one read after an interim response in the same read",
    "head split inside a field name, a value and the blank line",
    "interim and final head split across reads",
])
async def test_a_response_head_in_pieces_and_after_interim_responses(proxy, split: str) -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nConnection: keep-alive\r\n\r\n"
    final = (b"HTTP/1.1 200 OK\r\nX-Kept: yes\r\nConnection: keep-alive, X-Hidden\r\nX-Hidden: 1\r\n"
             b"Content-Length: 5\r\n\r\nhello")
    whole = interim + final
    pieces = {
        "head in one read after an interim response in the same read": [whole],
        "head split inside a field name, a value and the blank line": [
            final[:20], final[20:40], final[40:len(final) - 8], final[len(final) - 8:]],
        "interim and final head split across reads": [
            whole[:30], whole[30:len(interim) + 20], whole[len(interim) + 20:]],
    }[split]
    upstream = PiecesUpstream(*pieces)
    worker = await proxy(one_version((await upstream.start()).address))
    data = await raw_exchange(worker.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    if split != "head split inside a field name, a value and the blank line":
        assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        data = data[data.index(b"\r\n\r\n") + 4 :]
    status, headers, body = parse_response(data)
    assert (status, body) == (200, b"hello")
    assert headers["x-kept"] == "yes" and headers["content-length"] == "5" and "x-hidden" not in headers
    await upstream.stop()


async def test_a_response_head_without_end_is_refused_with_502(proxy) -> None:
    upstream = PiecesUpstream(b"HTTP/1.1 200 OK\r\n", *[b"X-Filler: " + b"x" * 8000 + b"\r\n"] * 10)
    worker = await proxy(one_version((await upstream.start()).address))
    data = await raw_exchange(worker.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    status, _, body = parse_response(data)
    assert status == 502 and b"too large" in body
    await upstream.stop()


@pytest.mark.parametrize("pieces", [1, 7], ids=["head and body in one read", "body in seven reads"])
async def test_a_large_body_streams_past_the_parser_and_the_connection_is_reused(proxy, pieces: int) -> None:
    """A Content-Length body of 16 KiB or more goes from the upstream's reads to the client without
    the parser; the connection still goes back to the pool only after exactly that many bytes."""
    body = bytes(range(256)) * 200  # 51,200 bytes, each position distinct enough to catch a shifted copy
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Kept: yes\r\n\r\n" % len(body) + body
    size = -(-len(reply) // pieces)
    upstream = PiecesUpstream(*[reply[i : i + size] for i in range(0, len(reply), size)])
    upstream.answer_twice = True
    worker = await proxy(one_version((await upstream.start()).address))
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    for last in (False, True):
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n" + (b"Connection: close\r\n" if last else b"") + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Content-Length: 51200" in head and b"X-Kept: yes" in head
        assert await asyncio.wait_for(reader.readexactly(len(body)), 5) == body
    assert upstream.connections == 1  # the second request reused the pooled connection
    writer.close()
    await upstream.stop()


async def test_bytes_after_a_streamed_body_keep_the_connection_out_of_the_pool(proxy) -> None:
    body = b"x" * 20000
    upstream = PiecesUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + body + b"HTTP/1.1 200 OK\r\n")
    upstream.answer_twice = True
    worker = await proxy(one_version((await upstream.start()).address))
    for _ in range(2):
        data = await raw_exchange(worker.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        status, _, received = parse_response(data)
        assert (status, received) == (200, body)
    assert upstream.connections == 2  # the stray bytes made the first connection untrustworthy
    await upstream.stop()
