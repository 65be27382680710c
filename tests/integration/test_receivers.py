"""The writer -> receiver contract: a worker applies exactly the snapshot the writer computed (its
generation and its bucket tables) or refuses it and says why, and catches up with the next one.

The test plays the writer (the supervisor's side) against a real worker process
(``python -m proxy.workerproc``) on a real control channel and a real listening socket."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.channel import Channel
from proxy.worker import Worker
from turnout.core import buckets, routing, wire
from turnout.core.hashing import Bucketer
from turnout.core.reader import from_document

from ..helpers import picks, service

ROOT = Path(__file__).resolve().parents[2]


def document(v1: str, v2: str, weights: dict[str, int], ca: str | None = None) -> dict[str, object]:
    versions: dict[str, object] = {"v1": [v1], "v2": [v2]}
    if ca is not None:  # a third version whose CA file the worker must read: missing = refused
        versions["v3"] = {"endpoints": ["https://127.0.0.1:9"], "tls": {"ca": ca}}
    return {"listen": "127.0.0.1:0", "services": {"shop": service(
        versions, split=weights, sticky={"header": "x-user"}, salt="contract")}}


class Writer:
    """The writer's side: numbers generations and plans their tables once, as ``Control`` does."""

    def __init__(self) -> None:
        self.generation = 0
        self.tables: buckets.Tables = {}

    def next(self, doc: dict[str, object]) -> wire.Snapshot:
        self.generation += 1
        self.tables = routing.plan(from_document(doc, "writer.yaml"), self.tables)
        return wire.Snapshot(self.generation, "writer.yaml", doc, self.tables)


@pytest.fixture
def worker_process() -> Iterator[tuple[socket.socket, socket.socket, subprocess.Popen[bytes]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    parent, child = socket.socketpair()

    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.workerproc",
         json.dumps({"listeners": {"http": listener.fileno()}, "control": child.fileno()})],
        pass_fds=[listener.fileno(), child.fileno()], cwd=ROOT)
    child.close()
    yield listener, parent, process
    process.terminate()
    process.wait(20)
    listener.close()


def expected(snapshot: wire.Snapshot, users: range) -> dict[str, str]:
    """Where the writer's tables put each user: owners[H(salt, key)]."""
    owners = snapshot.tables[("shop", "default")].owners
    bucketer = Bucketer("contract")
    return {f"u{i}": owners[bucketer.bucket(f'u{i}'.encode())] for i in users}


async def test_a_worker_that_refused_catches_up_with_the_writers_tables(upstreams, worker_process, tmp_path) -> None:
    listener, parent, _ = worker_process
    port = listener.getsockname()[1]
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    channel = await Channel.over(parent)
    writer = Writer()
    users = range(600)

    first = writer.next(document(v1.address, v2.address, {"v1": 90, "v2": 10}))
    channel.send(first)
    assert await channel.receive() == wire.Ack(1)
    assert await picks(port, users) == expected(first, users)

    # The writer moves on (70/30) with a version whose CA file this worker cannot read: it refuses,
    # says why, and keeps serving generation 1.
    second = writer.next(document(v1.address, v2.address, {"v1": 70, "v2": 30}, ca=str(tmp_path / "gone.pem")))
    channel.send(second)
    answer = await channel.receive()
    assert isinstance(answer, wire.Refused) and answer.generation == 2 and "gone.pem" in answer.reason
    assert await picks(port, users) == expected(first, users)

    # Generation 3 was planned from generation 2's tables (which the worker never held). A worker that
    # rebalanced by itself would rebalance from generation 1's and land users elsewhere; it must serve
    # the writer's generation number and exactly the writer's tables.
    third = writer.next(document(v1.address, v2.address, {"v1": 80, "v2": 20}))
    from_one = routing.plan(from_document(third.document, "x"), first.tables)[("shop", "default")].owners
    assert from_one != third.tables[("shop", "default")].owners  # the two histories really differ
    channel.send(third)
    assert await channel.receive() == wire.Ack(3)
    assert await picks(port, users) == expected(third, users)


async def test_a_snapshot_whose_tables_do_not_fit_is_refused_and_changes_nothing() -> None:
    doc = document("127.0.0.1:1", "127.0.0.1:2", {"v1": 50, "v2": 50})
    config = from_document(doc, "t.yaml")
    worker = Worker(config, 7, routing.plan(config, {}))
    before = worker.state
    stale = routing.plan(from_document(document("127.0.0.1:1", "127.0.0.1:2", {"v1": 90, "v2": 10}), "t"), {})
    answer = worker.receive(wire.Snapshot(8, "t.yaml", doc, stale))
    assert isinstance(answer, wire.Refused) and "does not match its weights" in answer.reason
    assert worker.state is before and worker.state.generation == 7
    missing = worker.receive(wire.Snapshot(9, "t.yaml", doc, {}))
    assert isinstance(missing, wire.Refused) and "no bucket table for shop/default" in missing.reason
    assert worker.receive(wire.Snapshot(10, "t.yaml", doc, routing.plan(config, {}))) == wire.Ack(10)


async def test_channel_ends_at_eof() -> None:
    left, right = socket.socketpair()
    a, b = await Channel.over(left), await Channel.over(right)
    a.send(wire.Collect(1))
    assert await b.receive() == wire.Collect(1)
    a.writer.write(b'{"v": 99, "kind": "ack", "generation": 1}\n')  # another protocol's line: skipped
    a.send(wire.Ack(2))
    assert await b.receive() == wire.Ack(2)
    a.writer.close()
    assert await asyncio.wait_for(b.receive(), 5) is None
    b.writer.close()
