"""A worker process of a supervisor (see ``fleet``): serve on the inherited listening sockets and follow
the control channel. Started as ``python -m proxy.workerproc '{"listeners": {...}, "control": fd}'``."""

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

from .control import decode_tables
from .core.model import ConfigError
from .core.reader import from_document
from .worker import Worker

log = logging.getLogger("turnout")


async def _serve(spec: dict[str, Any]) -> None:
    sockets = {name: socket.socket(fileno=fd) for name, fd in spec["listeners"].items()}
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=spec["control"]))

    def send(message: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(json.dumps(message).encode() + b"\n")

    first = json.loads(await reader.readline())
    worker = Worker(from_document(first["document"], first["source"]), first["generation"],
                    decode_tables(first["tables"]))
    await worker.start(sockets)
    send({"type": "applied", "generation": worker.state.generation})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor reloads, then tells us

    async def follow() -> None:
        while line := await reader.readline():
            message = json.loads(line)
            if message["type"] == "config":
                tables = decode_tables(message["tables"]) if message["tables"] else None
                try:
                    worker.apply(from_document(message["document"], message["source"]), tables)
                except ConfigError as exc:  # a certificate file changed since the supervisor checked it
                    worker.stats.reloads_failed += 1
                    send({"type": "refused", "error": str(exc)})
                    continue
                worker.stats.reloads_ok += 1
                log.info("worker %d applied generation %d", os.getpid(), worker.state.generation)
                send({"type": "applied", "generation": worker.state.generation})
            elif message["type"] == "stats":
                send({"type": "stats", "id": message["id"], "snapshot": worker.snapshot()})
        stop.set()  # the supervisor is gone: nobody to answer to

    following = loop.create_task(follow())
    await stop.wait()
    following.cancel()
    log.info("worker %d shutting down: draining connections", os.getpid())
    await worker.shutdown()
    log.info("worker %d stopped", os.getpid())


def main(argv: list[str]) -> int:
    logging.basicConfig(level=os.environ.get("TURNOUT_LOG_LEVEL", "INFO"),
                        format="turnout[%(process)d] %(levelname)s %(message)s", stream=sys.stderr)
    uvloop.run(_serve(json.loads(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
