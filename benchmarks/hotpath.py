"""The Python cost of one proxied request, without sockets: a profiling aid, not the benchmark.

    .venv/bin/python benchmarks/hotpath.py [--requests 200000] [--profile]

Drives a real ``Downstream`` and a pooled ``UpstreamConnection`` through in-memory transports: feed a
request head, answer with a 100-byte response, repeat. What it measures is everything Turnout does per
request except the system calls and the event loop, so it is stable where wall-clock runs on a shared
machine are not, and ``--profile`` shows where that time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

from proxy.http.downstream import Downstream
from proxy.http.upstream import UpstreamConnection
from proxy.worker import Worker
from turnout.core import reader

CONFIG = """
listen: 127.0.0.1:0
services:
  bench:
    versions: {v1: [127.0.0.1:19101], v2: [127.0.0.1:19102]}
    rules:
      - {name: testers, match: {headers: {x-canary: always}}, version: v2}
      - {name: default, split: {v1: 90, v2: 10}, sticky: {header: x-user-id}}
"""

def response(size: int) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 27 Nov 2026 15:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n" % size + b"x" * size)


class MemoryTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, data: Any) -> None:
        self.written.extend(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else None

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...


def config_with_flags(count: int) -> str:
    """The benchmark config, with ``count`` flags (a targeting rule and a 10 % rollout each) injected."""
    if not count:
        return CONFIG
    flags = "".join(
        f"  flag{i}:\n    variants: {{'yes': true, 'no': false}}\n    default: 'no'\n"
        f"    rules: [{{match: {{context: {{plan: pro}}}}, variant: 'yes'}}]\n"
        f"    rollout: {{'yes': 10, 'no': 90}}\n"
        for i in range(count)
    )
    keys = ", ".join(f"flag{i}" for i in range(count))
    return CONFIG + f"    inject_flags: {{flags: [{keys}]}}\nflags:\n" + flags


def run(requests: int, size: int = 100, flags: int = 0) -> float:
    answer = response(size)
    worker = Worker(reader.parse(config_with_flags(flags), "hotpath"))
    client = MemoryTransport()
    down = Downstream(worker, worker.listeners["http"])
    down.connection_made(client)  # type: ignore[arg-type]
    for address in ("127.0.0.1:19101", "127.0.0.1:19102"):  # one idle pooled connection each
        version = "v1" if address.endswith("19101") else "v2"
        pool = worker.pool(worker.state.services["bench"].versions[version].endpoints[0])
        conn = UpstreamConnection(pool)
        conn.connection_made(MemoryTransport())  # type: ignore[arg-type]
        pool.open += 1
        pool.idle.append(conn)
    heads = [
        b"GET /100B HTTP/1.1\r\nHost: 127.0.0.1:19100\r\nX-User-Id: user-%d\r\n\r\n" % i for i in range(1000)
    ]
    started = time.perf_counter()
    for i in range(requests):
        down.data_received(heads[i % 1000])
        upstream = down.queue[0].conn
        assert upstream is not None
        upstream.data_received(answer)
        if len(client.written) > 1000:
            client.written.clear()
    return (time.perf_counter() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--size", type=int, default=100, help="response body bytes")
    parser.add_argument("--flags", type=int, default=0, help="flags evaluated and injected per request")
    args = parser.parse_args()
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run, args.requests, args.size, args.flags)
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    else:
        best = min(run(args.requests, args.size, args.flags) for _ in range(3))
        print(f"{best:.2f} µs of Python per proxied request ({args.size}-byte responses, {args.flags} flags)")


if __name__ == "__main__":
    main()
