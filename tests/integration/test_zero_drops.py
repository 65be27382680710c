"""Routing changes under load fail zero requests, and a sticky user changes
version only when a change moved their bucket. Against a real Turnout process."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import yaml

from turnout.core.buckets import rebalance_table
from turnout.core.hashing import Bucketer

from .test_admin_changes import Admin, wait_admin

USERS = [f"user-{i}" for i in range(200)]


def config_text(blue: str, green: str) -> str:
    return yaml.safe_dump({
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "services": {"shop": {"versions": {"blue": [blue], "green": [green]}, "rules": [
            {"name": "default", "split": {"blue": 100, "green": 0}, "sticky": {"header": "x-user"}},
        ]}},
    })


async def load(port: int, stop: asyncio.Event, keep_alive: bool, seen: list[tuple[str, str]],
               failures: list[str]) -> None:
    """About 100 requests a second until ``stop``, at most 4,000."""
    connector = aiohttp.TCPConnector(force_close=not keep_alive)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(4000):
            if stop.is_set():
                return
            user = USERS[(i * 7 + (0 if keep_alive else 3)) % len(USERS)]
            try:
                async with session.get(f"http://127.0.0.1:{port}/", headers={"X-User": user}) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(f"{response.status} for {user}")
                    seen.append((user, response.headers.get("X-Version", "?")))
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))
            await asyncio.sleep(0.01)


def is_subsequence(observed: list[str], allowed: list[str]) -> bool:
    position = 0
    for version in observed:
        while position < len(allowed) and allowed[position] != version:
            position += 1
        if position == len(allowed):
            return False
    return True


def collapse(values: list[str]) -> list[str]:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


async def test_changes_under_load_drop_nothing_and_move_only_moved_buckets(upstreams, spawn_proxy,
                                                                           tmp_path: Path) -> None:
    blue, green = await upstreams("blue"), await upstreams("green")
    process = spawn_proxy(config_text(blue.address, green.address))
    await wait_admin(process)
    admin = Admin(process, tmp_path)
    tables = {1: rebalance_table(None, {"blue": 100, "green": 0})}
    stop, seen, failures = asyncio.Event(), list[tuple[str, str]](), list[str]()
    clients = [asyncio.create_task(load(process.port, stop, keep_alive, seen, failures))
               for keep_alive in (True, False)]
    started = time.monotonic()
    weights = "/v1/services/shop/rules/default/weights"
    async with aiohttp.ClientSession() as session:
        generation = 1
        for step in range(1, 21):  # a canary walk: 20 weight changes, up and down
            green_share = [5, 10, 20, 30, 50, 40, 60, 80, 70, 90][step % 10] if step < 20 else 95
            status, body = await admin.call(session, "PUT", weights,
                                            {"weights": {"blue": 100 - green_share, "green": green_share}})
            assert status == 200, body
            generation = body["generation"]
            tables[generation] = rebalance_table(tables[generation - 1],
                                                 {"blue": 100 - green_share, "green": green_share})
            await asyncio.sleep(0.6)
        status, body = await admin.call(session, "PUT", weights, {"weights": {"blue": 0, "green": 1}})
        generation = body["generation"]  # the blue/green swap: everyone on green in one step
        tables[generation] = rebalance_table(tables[generation - 1], {"blue": 0, "green": 1})
        await asyncio.sleep(1)
        status, body = await admin.call(session, "POST", "/v1/rollback", {"generation": 5})
        assert status == 200, body
        generation = body["generation"]
        tables[generation] = tables[5]
        await asyncio.sleep(1)
        process.signal(signal.SIGHUP)  # the file again, with the admin's weights on top: nothing moves
        for _ in range(100):
            if f"generation {generation + 1}" in process.output():
                break
            await asyncio.sleep(0.05)
        tables[generation + 1] = tables[generation]
        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - started)))
    stop.set()
    await asyncio.gather(*clients)

    assert failures == []
    assert len(seen) > 2000  # ~20 s at ~100 req/s per client
    bucketer = Bucketer("shop")
    order = sorted(tables)
    by_user: dict[str, list[str]] = {}
    for user, version in seen:
        by_user.setdefault(user, []).append(version)
    moved = 0
    for user, versions in by_user.items():
        owners = collapse([tables[g].owners[bucketer.bucket(user.encode())] for g in order])
        observed = collapse(versions)
        assert is_subsequence(observed, owners), (user, observed, owners)
        moved += len(observed) > 1
    assert moved > 50  # the walk did move many users, each only with their bucket
