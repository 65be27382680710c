"""Process level: the listening socket, signals, and one or several worker processes.

With one worker, the process serves directly. With ``--workers N`` a supervisor opens the socket,
forks N workers that all accept on it, and stays out of the data path: on SIGHUP it reads and validates
the file once and sends the same text to every worker (so all of them rebalance their bucket tables
from the same input); on SIGTERM it forwards the signal and waits for every worker's graceful drain.

Signals, for both modes:
- SIGHUP: re-read the config; a bad file is refused with one log line and the old snapshot serves on.
- SIGTERM / SIGINT: graceful shutdown (``Worker.shutdown``), exit 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from aiohttp import web

from . import admin, routing
from . import config as config_module
from . import control as control_module
from .config import Config, ConfigError
from .control import Control, Tables
from .overlay import ChangeError
from .routing import RoutingState
from .worker import Worker, listen_socket

__all__ = ["serve"]

log = logging.getLogger("turnout")


def serve(config_path: str, workers: int = 1) -> int:
    """Run Turnout until SIGTERM. Returns the process exit code."""
    control = Control(config_path, _not_serving_yet)
    try:
        config, document = control.boot()  # the file with the saved admin changes on top
        token = admin.load_token(config.admin, config.source) if config.admin is not None else None
    except ConfigError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # the state file is not JSON: refuse rather than drop admin changes
        print(f"turnout: {control.state_path}: unreadable ({exc}); fix or remove it", file=sys.stderr)
        return 2
    demo = start_demo(config)
    try:
        sockets = {}
        for listener in config.listeners:
            try:
                sockets[listener.name] = listen_socket(listener)
            except OSError as exc:
                print(f"turnout: cannot listen on {listener.address}: {exc.strerror}", file=sys.stderr)
                return 1
            host, port = sockets[listener.name].getsockname()[:2]
            log.info("listening on %s://%s:%d (listener %s)", listener.scheme, host, port, listener.name)
        log.info("serving with %d worker(s), generation %d", workers, control.generation)
        if workers <= 1:
            uvloop.run(_serve_one(config, control, sockets, token))
            return 0
        if config.admin is not None:
            log.warning("the admin API is not served with --workers > 1 yet; run one worker to use it")
        return _supervise(config, document, control, sockets, workers)
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(5)


def _not_serving_yet(config: Config, document: Any, tables: Tables | None) -> RoutingState:
    raise AssertionError("a change arrived before the workers started")


async def _serve_one(config: Config, control: Control, sockets: dict[str, socket.socket],
                     token: str | None) -> None:
    """One worker in this process: the admin API and signals act on it directly."""
    worker = Worker(config, control.generation, control.tables)

    def apply(new: Config, document: Any, tables: Tables | None) -> RoutingState:
        worker.apply(new, tables)
        return worker.state

    control.apply = apply
    control.booted(worker.state)

    def reload_file() -> None:
        try:
            control.reload_file()
        except ChangeError as exc:
            worker.stats.reloads_failed += 1
            log.error("reload refused, still serving generation %d: %s: %s: %s", worker.state.generation,
                      control.config_path, exc.field, exc.message)
            return
        worker.stats.reloads_ok += 1
        log.info("reloaded %s: generation %d", control.config_path, worker.state.generation)

    await _run_worker(worker, sockets, reload_file, None, token, control)


async def _run_worker(worker: Worker, sockets: dict[str, socket.socket], on_hup: Callable[[], None],
                      pipe: int | None, token: str | None, control: Control | None) -> None:
    """A worker's life: serve, take new configs (SIGHUP, or the supervisor's pipe), drain on TERM."""
    loop = asyncio.get_running_loop()
    await worker.start(sockets)
    admin_runner = await _start_admin(worker, worker.config, token, control) if token is not None else None
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if pipe is not None:
        reader = _FrameReader(pipe)

        def on_message() -> None:
            for text in reader.read():
                if text is None:  # the supervisor is gone: nobody to answer to
                    stop.set()
                    return
                message = json.loads(text)
                tables = control_module.decode_tables(message["tables"]) if message["tables"] else None
                try:
                    worker.apply(config_module.from_document(message["document"], worker.config.source), tables)
                except ConfigError as exc:  # a certificate file changed since the supervisor checked it
                    worker.stats.reloads_failed += 1
                    log.error("worker %d refused the new config: %s", os.getpid(), exc)
                    continue
                worker.stats.reloads_ok += 1
                log.info("worker %d applied generation %d", os.getpid(), worker.state.generation)

        loop.add_reader(pipe, on_message)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    log.info("shutting down: draining connections")
    await worker.shutdown()
    if admin_runner is not None:
        await admin_runner.cleanup()
    log.info("stopped")


async def _start_admin(worker: Worker, config: Config, token: str, control: Control | None) -> web.AppRunner:
    assert config.admin is not None
    runner = web.AppRunner(admin.make_app(worker, token, control), access_log=None)
    await runner.setup()
    listen = config.admin.listen
    sock = socket.create_server((listen.host, listen.port))
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    where = f"${config.admin.token_env}" if config.admin.token_env else config.admin.token_file
    log.info("admin API on http://%s:%d (bearer token in %s)", listen.host, port, where)
    return runner


# ----------------------------------------------------------------------------------------------- supervisor


def _supervise(config: Config, document: Any, control: Control, sockets: dict[str, socket.socket],
               count: int) -> int:
    """Fork ``count`` workers and feed them every new effective config. The supervisor keeps a mirror
    snapshot (the same pure build the workers run), so generations and bucket tables are tracked here
    and persisted, and a replaced worker starts from exactly the tables its siblings hold."""
    handled = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    children: dict[int, int] = {}  # pid -> write end of its pipe
    document_now = document  # what a worker started now must serve
    mirror = routing.build(config, generation=control.generation, tables=control.tables)

    def apply(new: Config, new_document: Any, tables: Tables | None) -> RoutingState:
        nonlocal mirror, document_now
        mirror = routing.build(new, mirror, tables=tables)
        document_now = new_document
        message = json.dumps({"document": new_document,
                              "tables": control_module.encode_tables(tables) if tables else None}).encode()
        frame = struct.pack("!I", len(message)) + message
        for fd in children.values():
            os.write(fd, frame)
        return mirror

    control.apply = apply
    control.booted(mirror)

    def spawn() -> None:
        read_end, write_end = os.pipe()
        generation, tables = control.generation, control.tables
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(write_end)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
            code = 0
            try:
                config_now = config_module.from_document(document_now, str(control.config_path))
                worker = Worker(config_now, generation, tables)
                uvloop.run(_run_worker(worker, sockets, lambda: None, read_end, None, None))
            except BaseException:
                log.exception("worker crashed")
                code = 1
            os._exit(code)
        os.close(read_end)
        children[pid] = write_end

    for _ in range(count):
        spawn()
    stopping = False
    while children:
        info = signal.sigwaitinfo(handled)
        if info.si_signo == signal.SIGHUP and not stopping:
            try:
                control.reload_file()
            except ChangeError as exc:
                log.error("reload refused, workers keep generation %d: %s: %s: %s", control.generation,
                          control.config_path, exc.field, exc.message)
                continue
            log.info("reloaded %s: generation %d sent to %d workers", control.config_path, control.generation,
                     len(children))
        elif info.si_signo in (signal.SIGTERM, signal.SIGINT) and not stopping:
            stopping = True
            for sock in sockets.values():
                sock.close()  # our copy: once the workers close theirs, the ports stop accepting
            for pid in children:
                os.kill(pid, signal.SIGTERM)
        elif info.si_signo == signal.SIGCHLD:
            for pid in list(children):  # only our workers: the demo upstreams are a child too
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
                os.close(children.pop(pid))
                if not stopping:
                    log.error("worker %d exited (status %d); starting a new one", pid, status)
                    spawn()
    return 0


class _FrameReader:
    """Length-prefixed config texts from the supervisor's pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        os.set_blocking(fd, False)

    def read(self) -> list[str | None]:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return []
        if not data:
            return [None]
        self.buffer += data
        texts: list[str | None] = []
        while len(self.buffer) >= 4:
            (size,) = struct.unpack("!I", self.buffer[:4])
            if len(self.buffer) < 4 + size:
                break
            texts.append(self.buffer[4 : 4 + size].decode())
            self.buffer = self.buffer[4 + size :]
        return texts


def start_demo(config: Config) -> subprocess.Popen[bytes] | None:
    """The demo upstreams of the default config, as a child process Turnout owns."""
    if not config.demo:
        return None
    args = [f"{app.version}={app.listen}" for app in config.demo]
    process = subprocess.Popen([sys.executable, "-m", "proxy.demo", *args])
    deadline = time.monotonic() + 10
    waiting = list(config.demo)
    while waiting and time.monotonic() < deadline and process.poll() is None:
        try:  # serve only once the demo upstreams answer, so the first curl is not a 502
            socket.create_connection((waiting[0].listen.host, waiting[0].listen.port), 0.2).close()
            waiting.pop(0)
        except OSError:
            time.sleep(0.05)
    if waiting:
        log.warning("demo upstreams did not come up: %s", ", ".join(str(app.listen) for app in waiting))
    return process
