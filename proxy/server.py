"""Process level: the listening sockets, signals, the admin API, and one or several worker processes.

With one worker, the process serves directly and the admin API acts on it. With ``--workers N`` this
process becomes a supervisor: it opens the sockets, starts N worker processes that accept on them
(``fleet``), serves the admin API for all of them, and stays out of the data path.

Signals, for both modes:
- SIGHUP: re-read the config file (with the admin overlay on top); a bad file is refused with one log
  line and the old snapshot serves on.
- SIGTERM / SIGINT: graceful shutdown (``Worker.shutdown`` in every worker), exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import uvloop
from aiohttp import web

from . import admin
from .control import Control, Tables
from .core.model import Config, ConfigError
from .core.overlay import ChangeError
from .core.routing import RoutingState
from .fleet import Fleet
from .worker import Worker, listen_socket

__all__ = ["serve"]

log = logging.getLogger("turnout")


def serve(config_path: str, workers: int = 1) -> int:
    """Run Turnout until SIGTERM. Returns the process exit code."""
    control = Control(config_path, _not_serving_yet)
    try:
        config, document = control.boot()  # the file with the saved admin changes on top
        token = admin.load_token(config.admin, config.source) if config.admin is not None else None
        if config.admin is not None:  # checked now: a missing read-only token must stop the start
            admin.load_flags_token(config.admin, config.source)
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
        else:
            uvloop.run(_supervise(config, document, control, sockets, workers, token))
        return 0
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

    loop = asyncio.get_running_loop()
    await worker.start(sockets)
    admin_runner = await _start_admin(worker, worker.config, token, control) if token is not None else None
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_file)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    log.info("shutting down: draining connections")
    await worker.shutdown()
    if admin_runner is not None:
        await admin_runner.cleanup()
    log.info("stopped")


async def _start_admin(backend: admin.AdminBackend, config: Config, token: str, control: Control) -> web.AppRunner:
    assert config.admin is not None
    flags_token = admin.load_flags_token(config.admin, config.source)
    runner = web.AppRunner(admin.make_app(backend, token, control, flags_token), access_log=None)
    await runner.setup()
    listen = config.admin.listen
    sock = socket.create_server((listen.host, listen.port))
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    where = f"${config.admin.token_env}" if config.admin.token_env else config.admin.token_file
    log.info("admin API on http://%s:%d (bearer token in %s)", listen.host, port, where)
    return runner


# ----------------------------------------------------------------------------------------------- supervisor


async def _supervise(config: Config, document: Any, control: Control, sockets: dict[str, socket.socket],
                     count: int, token: str | None) -> None:
    """Start ``count`` worker processes on the shared sockets and stay out of the data path: reload on
    SIGHUP, serve the admin API for the whole fleet, and drain every worker on SIGTERM."""
    fleet = Fleet(sockets, count)
    control.booted(fleet.boot(config, document, control.generation, control.tables))
    control.apply = fleet.apply
    await fleet.start()
    admin_runner = await _start_admin(fleet, config, token, control) if token is not None else None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload_file() -> None:
        try:
            control.reload_file()
        except ChangeError as exc:
            log.error("reload refused, workers keep generation %d: %s: %s: %s", control.generation,
                      control.config_path, exc.field, exc.message)
            return
        log.info("reloaded %s: generation %d sent to %d workers", control.config_path, control.generation,
                 len(fleet.members))

    loop.add_signal_handler(signal.SIGHUP, reload_file)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    log.info("shutting down: draining %d workers", len(fleet.members))
    await fleet.stop()
    for sock in sockets.values():
        sock.close()
    if admin_runner is not None:
        await admin_runner.cleanup()
    log.info("stopped")


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
