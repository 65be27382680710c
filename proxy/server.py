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

import uvloop
from aiohttp import web

from . import admin
from .control import Control
from .core import wire
from .core.model import Config, ConfigError
from .core.overlay import ChangeError
from .fleet import Fleet
from .worker import Worker, listen_socket

__all__ = ["serve"]

log = logging.getLogger("turnout")


def serve(config_path: str, workers: int = 1) -> int:
    """Run Turnout until SIGTERM. Returns the process exit code."""
    control = Control(config_path)
    try:
        config, snapshot = control.boot()  # the file with the saved admin changes on top, persisted
        token = admin.load_token(config.admin, config.source) if config.admin is not None else None
        if config.admin is not None:  # checked now: a missing read-only token must stop the start
            admin.load_flags_token(config.admin, config.source)
    except ConfigError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 2
    except ChangeError as exc:  # the state file cannot be written: serving would lose changes
        print(f"turnout: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:  # the state file is not JSON: refuse rather than drop admin changes
        print(f"turnout: {control.state_path}: unreadable ({exc}); fix or remove it", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"turnout: {control.state_path}: cannot read it: {exc.strerror}", file=sys.stderr)
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
            uvloop.run(_serve_one(config, snapshot, control, sockets, token))
        else:
            uvloop.run(_supervise(config, snapshot, control, sockets, workers, token))
        return 0
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(5)


async def _serve_one(config: Config, snapshot: wire.Snapshot, control: Control, sockets: dict[str, socket.socket],
                     token: str | None) -> None:
    """One worker in this process: the receiver of ``control``, the admin API and signals act on it."""
    worker = Worker(config, snapshot.generation, snapshot.tables)

    def apply(_config: Config, next_snapshot: wire.Snapshot) -> None:
        worker.receive(next_snapshot)  # a refusal is kept by the worker and shown by converge

    control.apply = apply
    await worker.start(sockets)
    admin_runner = await _start_admin(worker, worker.config, token, control) if token is not None else None
    await _until_stopped(control, "")
    log.info("shutting down: draining connections")
    await worker.shutdown()
    if admin_runner is not None:
        await admin_runner.cleanup()
    log.info("stopped")


async def _until_stopped(control: Control, receivers: str) -> None:
    """Reload on SIGHUP (a bad file is refused with one line and the old generation serves on) until
    SIGTERM or SIGINT."""
    def reload_file() -> None:
        try:
            entry = control.reload_file()
        except ChangeError as exc:
            log.error("reload refused, still serving generation %d: %s", control.generation,
                      ": ".join(part for part in (control.source, exc.field, exc.message) if part))
            return
        log.info("reloaded %s: generation %d%s", control.config_path, entry.generation, receivers)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_file)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()


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


async def _supervise(config: Config, snapshot: wire.Snapshot, control: Control, sockets: dict[str, socket.socket],
                     count: int, token: str | None) -> None:
    """Start ``count`` worker processes on the shared sockets and stay out of the data path: reload on
    SIGHUP, serve the admin API for the whole fleet, and drain every worker on SIGTERM."""
    fleet = Fleet(sockets, count)
    fleet.apply(config, snapshot)
    control.apply = fleet.apply
    await fleet.start()
    admin_runner = await _start_admin(fleet, config, token, control) if token is not None else None
    await _until_stopped(control, f" sent to {count} workers")
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
