"""The controller process: load the config, take the state file's lock, boot the writer (persisted
before it serves), serve the API, reload the config file on SIGHUP, stop on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from turnout.api import tokens
from turnout.core.errors import ChangeError, ConfigError
from turnout.core.model import Config
from turnout.core.writer import Writer
from turnout.providers import containers

from . import config as config_module
from .api import Fleet, make_app
from .deploys import Deploys
from .releases import BookReleases
from .rollouts import Book
from .runtime.docker import DockerRuntime
from .store import Locked, Store

__all__ = ["serve"]

log = logging.getLogger("turnout")


def load_token(settings: config_module.Settings, source: str) -> str:
    """The bearer token: from the named environment variable, else from the token file, created (mode
    0600) with a random token if it does not exist yet."""
    return tokens.load(source, "controller", settings.token_env, settings.token_file, create=True)


def serve(config_path: str) -> int:
    """Run the controller until SIGTERM. Returns the process exit code."""
    try:
        loaded = config_module.load(config_path)
        token = load_token(loaded.settings, loaded.source)
    except ConfigError as exc:
        print(f"turnout controller: {exc}", file=sys.stderr)
        return 2
    store = Store(loaded.settings.state_file)
    try:
        store.lock()
    except Locked as exc:
        print(f"turnout controller: {exc}", file=sys.stderr)
        return 1

    def read_source() -> Any:
        return config_module.load(config_path).document

    def validate(document: Any) -> Config:
        return config_module.validate(document, loaded.source, loaded.settings.docker is None)

    book: list[Book] = []  # the rollouts, made on the loop; their state is written with every generation

    def persist(data: dict[str, Any]) -> None:
        book[0].persist_routing(data) if book else store.write(data)

    writer = Writer(Path(config_path).name, read_source, validate, persist, time.time)
    try:
        return uvloop.run(_run(writer, store, loaded, token, book))
    finally:
        store.unlock()


async def _run(writer: Writer, store: Store, loaded: config_module.ControllerConfig, token: str,
               book: list[Book]) -> int:
    fleet = Fleet()
    rollouts = Book(writer, fleet.proxies, time.time, store.write, loaded.source)
    rollouts.configure(loaded.rollouts, loaded.templates)
    try:
        saved = store.read()
        rollouts.restore(saved)
        book.append(rollouts)
        config, snapshot = writer.boot(saved, "controller")
    except (ConfigError, ChangeError) as exc:
        print(f"turnout controller: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"turnout controller: {store.path}: cannot read it ({exc}); fix or remove it", file=sys.stderr)
        return 2
    fleet.apply(config, snapshot)
    writer.apply = fleet.apply
    # handler_cancellation: a watch whose proxy went away (killed, partitioned) ends at once, so that
    # proxy stops counting as live LIVE_FOR seconds later rather than when its poll would have ended.
    deploys = Deploys(BookReleases(rollouts), DockerRuntime(loaded.settings.docker)) \
        if loaded.settings.docker else None
    if deploys is not None:
        deploys.restore(rollouts.extra.get("deploys"))
    fleet.report_every = rollouts.report_every
    fleet.on_poll = rollouts.woken.set
    runner = web.AppRunner(make_app(writer, fleet, token, rollouts, deploys), access_log=None,
                           handler_cancellation=True)
    await runner.setup()
    listen = loaded.settings.listen
    try:
        sock = socket.create_server((listen.host, listen.port))
    except OSError as exc:
        print(f"turnout controller: cannot listen on {listen}: {exc.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 1
    await web.SockSite(runner, sock).start()
    host, port = sock.getsockname()[:2]
    where = f"${loaded.settings.token_env}" if loaded.settings.token_env else loaded.settings.token_file
    log.info("controller API on http://%s:%d (bearer token in %s), generation %d", host, port, where,
             writer.generation)

    def reload() -> None:
        entry = writer.reload_or_say_why("signal", loaded.source)
        if entry is None:
            return
        try:
            again = config_module.load(loaded.source)
            rollouts.configure(again.rollouts, again.templates)
        except ConfigError as exc:  # the routing was read a moment ago; this is a race with an editor
            log.error("reload: rollout specs unchanged: %s", exc)
        log.info("reloaded %s: generation %d", loaded.source, entry.generation)

    loop = asyncio.get_running_loop()
    advancing = loop.create_task(rollouts.run())
    docker_url = loaded.settings.docker
    provider = containers.follow(docker_url, writer, loop, deploys.draining_ids if deploys else frozenset) \
        if docker_url else None
    if deploys is not None and provider is not None:
        deploys.refresh = provider.refresh
    if deploys is not None:
        deploys.drive()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    log.info("controller stopping")
    if provider is not None:
        provider.stop()
    advancing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await advancing
    fleet.close()
    await runner.cleanup()
    return 0
