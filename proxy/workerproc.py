"""A worker process of a supervisor (see ``fleet``): serve on the inherited listening sockets and follow
the control channel (``core.wire`` messages). Started as
``python -m proxy.workerproc '{"listeners": {...}, "control": fd}'``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

import uvloop

from turnout.core import wire
from turnout.core.reader import from_document
from turnout.io import logs

from .channel import Channel
from .worker import Worker

log = logging.getLogger("turnout")


async def _serve(spec: dict[str, Any]) -> None:
    sockets = {name: socket.socket(fileno=fd) for name, fd in spec["listeners"].items()}
    channel = await Channel.over(socket.socket(fileno=spec["control"]))
    first = await channel.receive()
    if not isinstance(first, wire.Snapshot):
        log.error("worker %d: the supervisor sent %r before a snapshot; exiting", os.getpid(), first)
        return
    # The first snapshot must be served as it is: there is nothing older to keep serving.
    worker = Worker(from_document(first.document, first.source), first.generation, first.tables)
    await worker.start(sockets)
    channel.send(wire.Ack(worker.state.generation))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor reloads, then tells us

    async def follow() -> None:
        while (message := await channel.receive()) is not None:
            if isinstance(message, wire.Snapshot):
                answer = worker.receive(message)
                if isinstance(answer, wire.Ack):
                    log.info("worker %d applied generation %d", os.getpid(), answer.generation)
                channel.send(answer)
            elif isinstance(message, wire.Collect):
                channel.send(wire.Report(message.request, worker.snapshot()))
        stop.set()  # the supervisor is gone: nobody to answer to

    following = loop.create_task(follow())
    await stop.wait()
    following.cancel()
    log.info("worker %d shutting down: draining connections", os.getpid())
    await worker.shutdown()
    log.info("worker %d stopped", os.getpid())


def main(argv: list[str]) -> int:
    logs.setup("turnout")  # level and format inherited from the supervisor's environment
    uvloop.run(_serve(json.loads(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
