"""Process level: the listening sockets, signals, the admin API, and one or several worker processes.

With one worker, the process serves directly and the admin API acts on it. With ``--workers N`` this
process becomes a supervisor: it opens the sockets, starts N worker processes that accept on them
(``supervisor``), serves the admin API for all of them, and stays out of the data path.

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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from turnout.core import wire
from turnout.core.errors import ChangeError, ConfigError
from turnout.core.model import Config
from turnout.core.reader import from_document, read_document
from turnout.providers import containers

from . import admin, build
from .control import Control
from .follower import Follower, controller_token
from .supervisor import Supervisor
from .worker import Worker, listen_socket

__all__ = ["serve"]

log = logging.getLogger("turnout")


def serve(config_path: str, workers: int = 1) -> int:
    """Run Turnout until SIGTERM. Returns the process exit code."""
    try:
        origin = _origin(Path(config_path))
        config, snapshot = origin.boot()
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
        print(f"turnout: {_state_path(config_path)}: unreadable ({exc}); fix or remove it", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"turnout: {_state_path(config_path)}: cannot read it: {exc.strerror}", file=sys.stderr)
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
        if isinstance(origin, Follower):
            host, port = next(iter(sockets.values())).getsockname()[:2]
            origin.address = f"{host}:{port}"
        serving = build.current()
        log.log(logging.WARNING if serving.stale or not serving.compiled else logging.INFO, "%s", serving.describe())
        log.info("serving with %d worker(s), generation %d", workers, snapshot.generation)
        if workers <= 1:
            uvloop.run(_serve_one(config, snapshot, origin, sockets, token))
        else:
            uvloop.run(_supervise(config, snapshot, origin, sockets, workers, token))
        return 0
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(5)


def _state_path(config_path: str) -> Path:
    return Path(config_path).with_name(Path(config_path).name + ".state.json")


def _origin(path: Path) -> Control | Follower:
    """Where routing comes from: this proxy's own writer (its file and admin changes), or, when the file
    names a controller, the follower of that controller."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read file: {exc.strerror}") from None
    local = read_document(text, str(path))
    managed = from_document(local, str(path)).controller
    if managed is None:
        return Control(path)
    if isinstance(local, dict) and (local.get("services") or local.get("flags")):
        raise ConfigError(str(path), "services", "a managed proxy takes its services and flags from its controller: "
                          "remove them from this file")
    return Follower(path, local, managed, controller_token(managed, str(path)))


Receivers = Callable[[Config, wire.Snapshot], Awaitable[tuple[int, str | None]]]


def _connect(origin: Control | Follower, receive: Receivers, apply: Callable[[Config, wire.Snapshot], None],
             collect: Callable[[], Awaitable[list[dict[str, Any]]]]) -> asyncio.Task[None] | None:
    """Hand the receivers to the origin: the writer ships to ``apply``; the follower applies through
    ``receive`` (waiting for the answer it reports back) and reports ``collect``'s counters."""
    if isinstance(origin, Control):
        origin.apply = apply
        return None
    origin.receive, origin.collect = receive, collect
    return asyncio.get_running_loop().create_task(origin.run())


async def _serve_one(config: Config, snapshot: wire.Snapshot, origin: Control | Follower,
                     sockets: dict[str, socket.socket], token: str | None) -> None:
    """One worker in this process: the receiver of the origin; the admin API and signals act on it."""
    worker = Worker(config, snapshot.generation, snapshot.tables)

    def apply(_config: Config, next_snapshot: wire.Snapshot) -> None:
        worker.receive(next_snapshot)  # a refusal is kept by the worker and shown by converge

    async def receive(_config: Config, next_snapshot: wire.Snapshot) -> tuple[int, str | None]:
        answer = worker.receive(next_snapshot)
        return worker.state.generation, answer.reason if isinstance(answer, wire.Refused) else None

    following = _connect(origin, receive, apply, worker.collect)
    await worker.start(sockets)
    admin_runner = await _start_admin(worker, worker.config, token, origin) if token is not None else None
    await _until_stopped(origin, "", config)
    if following is not None:
        following.cancel()
    log.info("shutting down: draining connections")
    await worker.shutdown()
    if admin_runner is not None:
        await admin_runner.cleanup()
    log.info("stopped")


async def _until_stopped(origin: Control | Follower, receivers: str, config: Config) -> None:
    """Reload on SIGHUP (a bad file is refused with one line and the old generation serves on) until
    SIGTERM or SIGINT; meanwhile a standalone proxy with ``providers.docker`` follows the engine's
    containers (a managed proxy's controller does that)."""
    def reload_file() -> None:
        if isinstance(origin, Follower):
            task = loop.create_task(origin.reload_local())
            reloads.add(task)  # kept until done
            task.add_done_callback(reloads.discard)
            return
        entry = origin.reload_or_say_why("signal", origin.source)
        if entry is None:
            return
        log.info("reloaded %s: generation %d%s", origin.config_path, entry.generation, receivers)

    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_file)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    docker_url = config.providers.docker
    provider = containers.follow(docker_url, origin, loop) if docker_url and isinstance(origin, Control) else None
    await stop.wait()
    if provider is not None:
        provider.stop()


async def _start_admin(backend: admin.AdminBackend, config: Config, token: str,
                       origin: Control | Follower) -> web.AppRunner:
    assert config.admin is not None
    flags_token = admin.load_flags_token(config.admin, config.source)
    control = origin if isinstance(origin, Control) else None
    managed_by = origin.managed.url if isinstance(origin, Follower) else None
    runner = web.AppRunner(admin.make_app(backend, token, control, flags_token, managed_by), access_log=None)
    await runner.setup()
    listen = config.admin.listen
    sock = socket.create_server((listen.host, listen.port))
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    where = f"${config.admin.token_env}" if config.admin.token_env else config.admin.token_file
    log.info("admin API on http://%s:%d (bearer token in %s)", listen.host, port, where)
    return runner


# ----------------------------------------------------------------------------------------------- supervisor


async def _supervise(config: Config, snapshot: wire.Snapshot, origin: Control | Follower,
                     sockets: dict[str, socket.socket], count: int, token: str | None) -> None:
    """Start ``count`` worker processes on the shared sockets and stay out of the data path: a receiver
    that fans out to its workers; reload on SIGHUP, serve the admin API for all its workers, and drain
    every worker on SIGTERM."""
    supervisor = Supervisor(sockets, count)
    supervisor.apply(config, snapshot)

    async def receive(next_config: Config, next_snapshot: wire.Snapshot) -> tuple[int, str | None]:
        supervisor.apply(next_config, next_snapshot)
        workers = await supervisor.converge(next_snapshot.generation, 10.0)
        refused = next((w["refused"] for w in workers if "refused" in w), None)
        return min((w["generation"] for w in workers), default=next_snapshot.generation), refused

    following = _connect(origin, receive, supervisor.apply, supervisor.collect)
    await supervisor.start()
    admin_runner = await _start_admin(supervisor, config, token, origin) if token is not None else None
    await _until_stopped(origin, f" sent to {count} workers", config)
    if following is not None:
        following.cancel()
    log.info("shutting down: draining %d workers", len(supervisor.members))
    await supervisor.stop()
    for sock in sockets.values():
        sock.close()
    if admin_runner is not None:
        await admin_runner.cleanup()
    log.info("stopped")


def start_demo(config: Config) -> subprocess.Popen[bytes] | None:
    """The demo upstreams of the default config, as a child process Turnout owns."""
    if not config.demo:
        return None
    args = [f"{app.version}={app.listen}" + (f"/{app.fail_percent}" if app.fail_percent else "")
            for app in config.demo]
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
