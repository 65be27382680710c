"""Malformed, ambiguous and slow requests: answered by the proxy, never seen by an upstream."""

from __future__ import annotations

import asyncio
import time

import pytest

from ..helpers import RawUpstream, parse_response, raw_exchange, service

MALFORMED = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "duplicate-cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "differing-cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "signed-cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"fffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "te-not-chunked-last": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "te-unknown": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "http09": b"GET /\r\n\r\n",
    "http2-version": b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    "duplicate-host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "missing-host": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n c\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: h\n\n",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "bad-target": b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n",
    "userinfo-target": b"GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    "asterisk-for-get": b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    "bad-method": b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
    "http10-chunked": b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_requests_get_400_and_reach_no_upstream(proxy, request_bytes: bytes) -> None:
    raw = await RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").start()
    worker = await proxy({"s": service({"v1": [raw.address]}, version="v1")})
    data = await raw_exchange(worker.port, request_bytes, timeout=3)
    status, headers, _ = parse_response(data)
    assert status == 400, data
    assert headers.get("connection") == "close"
    assert raw.received == []
    await raw.stop()


async def test_connect_is_refused(proxy) -> None:
    raw = await RawUpstream(b"").start()
    worker = await proxy({"s": service({"v1": [raw.address]}, version="v1")})
    data = await raw_exchange(worker.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert parse_response(data)[0] == 405
    assert raw.received == []


async def test_oversize_head_is_431(proxy) -> None:
    raw = await RawUpstream(b"").start()
    worker = await proxy({"s": service({"v1": [raw.address]}, version="v1")}, limits={"max_header_bytes": 4096})
    big = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"y" * 100) for i in range(50))
    data = await raw_exchange(worker.port, big + b"\r\n")
    assert parse_response(data)[0] == 431
    long_target = b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert parse_response(await raw_exchange(worker.port, long_target))[0] == 414
    assert raw.received == []


async def test_too_many_header_fields_is_431_and_never_forwarded(proxy) -> None:
    raw = await RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").start()
    worker = await proxy({"s": service({"v1": [raw.address]}, version="v1")})
    def head(count: int) -> bytes:  # Host plus count - 1 small fields: far under the byte limit
        return b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(count - 1)) + b"\r\n"
    assert parse_response(await raw_exchange(worker.port, head(130)))[0] == 431
    assert raw.received == []
    assert parse_response(await raw_exchange(worker.port, head(100)))[0] == 200  # the default allows 100
    await raw.stop()


async def test_slowloris_is_closed_at_the_header_deadline(proxy) -> None:
    raw = await RawUpstream(b"").start()
    worker = await proxy({"s": service({"v1": [raw.address]}, version="v1")}, limits={"header_timeout": "700ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    started = time.monotonic()
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n")

    async def trickle() -> None:  # headers that keep coming must not extend the deadline
        for i in range(100):
            writer.write(b"X-Slow-%d: 1\r\n" % i)
            await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    async with asyncio.timeout(5):
        data = await reader.read()
    trickling.cancel()
    elapsed = time.monotonic() - started
    assert parse_response(data)[0] == 408
    assert elapsed < 3, "closed near the 0.7 s deadline, not at the client's pace"
    writer.close()
    assert raw.received == []


async def test_idle_connection_that_sends_nothing_is_closed(proxy) -> None:
    raw = await RawUpstream(b"").start()
    worker = await proxy({"s": service({"v1": [raw.address]}, version="v1")}, limits={"header_timeout": "300ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    async with asyncio.timeout(3):
        data = await reader.read()
    assert parse_response(data)[0] == 408
    writer.close()


async def test_stalled_request_body_times_out(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy({"s": service({"v1": [up.address]}, version="v1")}, limits={"body_idle_timeout": "500ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\npartial")
    async with asyncio.timeout(4):
        data = await reader.read()
    assert data == b"" or parse_response(data)[0] == 408
    writer.close()


async def test_max_connections(upstreams, proxy) -> None:
    up = await upstreams("v1")
    worker = await proxy({"s": service({"v1": [up.address]}, version="v1")}, limits={"max_connections": 2})
    held = [await asyncio.open_connection("127.0.0.1", worker.port) for _ in range(2)]
    data = await raw_exchange(worker.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert parse_response(data)[0] == 503
    for _, writer in held:
        writer.close()


async def test_a_catastrophic_regex_rule_does_not_stall_the_worker(upstreams, proxy) -> None:
    """``(a+)+$`` against a header of a's and a '!': seconds to hours of backtracking in Python's re;
    RE2 answers at once, so the evil request and the next one are both served (the test's timeout is
    what fails if matching ever backtracks again)."""
    import aiohttp

    v1, v2 = await upstreams("v1"), await upstreams("v2")
    rules: list[dict[str, object]] = [
        {"name": "evil", "match": {"headers": {"x-a": {"regex": "(a+)+$"}}}, "version": "v2"},
             {"name": "default", "version": "v1"}]
    worker = await proxy({"s": service({"v1": [v1.address], "v2": [v2.address]}, rules)})
    async with aiohttp.ClientSession() as session:
        for header, version in (("a" * 60 + "!", "v1"), ("a" * 60, "v2")):
            async with session.get(f"http://127.0.0.1:{worker.port}/", headers={"X-A": header}) as response:
                assert response.headers["X-Version"] == version


async def test_slow_bodies_and_one_address_cannot_exhaust_connections(upstreams, proxy) -> None:
    up = await upstreams("v1")  # reads the whole body before it answers
    worker = await proxy({"s": service({"v1": [up.address]}, version="v1")},
                         limits={"body_idle_timeout": "1s", "min_body_rate": 512, "max_connections_per_client": 3})
    # A byte every 0.4 s keeps the idle deadline (1 s) alive forever; the minimum rate does not.
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n")
    answer = b""
    for _ in range(20):  # bounded: 8 s
        await asyncio.sleep(0.4)
        try:
            writer.write(b"x")
            answer += await asyncio.wait_for(reader.read(1000), 0.01)
        except (TimeoutError, ConnectionError):
            pass
        if answer:
            break
    assert answer.startswith(b"HTTP/1.1 408"), answer
    writer.close()
    # Three connections from 127.0.0.1 are allowed; a fourth is answered 503 and closed.
    held = [await asyncio.open_connection("127.0.0.1", worker.port) for _ in range(3)]
    await asyncio.sleep(0.1)
    extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", worker.port)
    refused = await asyncio.wait_for(extra_reader.read(1000), 3)
    assert refused.startswith(b"HTTP/1.1 503") and b"too many connections from this address" in refused
    extra_writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.2)
    assert parse_response(await raw_exchange(worker.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"))[0] == 200
