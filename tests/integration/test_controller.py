"""The controller as a process: one writer for a fleet, its API, the watch that proxies follow, its
lock on the state file, and durability across ``kill -9``. The proxies here are test clients speaking
the watch protocol over real HTTP (``wire.Poll`` in, ``wire.Snapshot`` out)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from turnout.core import buckets, routing, wire
from turnout.core.reader import from_document

ROOT = Path(__file__).resolve().parents[2]


def controller_config(weights: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "controller": {"listen": "127.0.0.1:0"},
        "services": {"shop": {"versions": {"v1": ["127.0.0.1:9001"], "v2": ["127.0.0.1:9002"]},
                              "rules": [{"name": "default", "split": weights or {"v1": 90, "v2": 10},
                                         "sticky": {"header": "x-user"}}]}},
        "flags": {"beta": {"variants": {"on": True, "off": False}, "default": "off",
                           "rollout": {"on": 20, "off": 80}}},
    }


class Controller:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.log_path = path.with_suffix(".log")
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.offset = self.log.tell()  # a restart appends: read only this run's lines
        self.process = subprocess.Popen([sys.executable, "-m", "controller", "--config", str(path)],
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.base = self._wait_url()
        self.headers = {"Authorization": "Bearer " + (path.parent / "controller.token").read_text().strip(),
                        "X-Turnout-Actor": "test"}

    def _wait_url(self) -> str:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            found = re.findall(r"controller API on (http://[\d.]+:\d+)", self.log_path.read_text()[self.offset:])
            if found and self.process.poll() is None:
                return str(found[-1])
            if self.process.poll() is not None:
                raise RuntimeError(self.log_path.read_text())
            time.sleep(0.02)
        raise RuntimeError("controller did not start")

    async def call(self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None,
                   **headers: str) -> tuple[int, Any]:
        async with session.request(method, self.base + path, json=body, headers={**self.headers, **headers}) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.read())

    async def poll(self, session: aiohttp.ClientSession, proxy: str, generation: int, wait: float = 5,
                   refused: int = 0, reason: str = "") -> wire.Message | None:
        """One long poll, as a managed proxy makes it."""
        message = wire.encode(wire.Poll(proxy, "", generation, refused, reason, {}))
        async with session.post(f"{self.base}/v1/watch?wait={wait}", data=message, headers=self.headers) as r:
            assert r.status in (200, 204), await r.text()
            return wire.decode(await r.read()) if r.status == 200 else None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(15)
        self.log.close()


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Any]:
    started: list[Controller] = []

    def start(document: dict[str, Any] | None = None) -> Controller:
        path = tmp_path / "controller.yaml"
        if document is not None or not path.exists():
            path.write_text(yaml.safe_dump(document or controller_config()))
        started.append(Controller(path))
        return started[-1]

    yield start
    for each in started:
        each.stop()


def planned(snapshot: wire.Snapshot) -> buckets.Tables:
    return routing.plan(from_document(snapshot.document, "x"), {})


async def test_watch_changes_and_convergence(controller) -> None:
    ctl = controller()
    async with aiohttp.ClientSession() as session:
        first = await ctl.poll(session, "edge-1", 0)  # a new proxy gets the current generation at once
        assert isinstance(first, wire.Snapshot) and first.generation == 1
        assert first.tables == planned(first) and set(first.document) == {"services", "flags"}
        assert await ctl.poll(session, "edge-1", 1, wait=0.3) is None  # nothing newer: 204 after the wait

        # A proxy waits on generation 1; a change answers only once it serves generation 2.
        waiting = asyncio.ensure_future(ctl.poll(session, "edge-1", 1, wait=20))
        await asyncio.sleep(0.2)
        change = asyncio.ensure_future(ctl.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                                {"weights": {"v1": 50, "v2": 50}}))
        second = await waiting
        assert isinstance(second, wire.Snapshot) and second.generation == 2
        assert second.tables == routing.plan(from_document(second.document, "x"), first.tables)
        await asyncio.sleep(0.3)
        assert not change.done()  # edge-1 has not said it serves 2 yet
        confirming = asyncio.ensure_future(ctl.poll(session, "edge-1", 2, wait=20))  # it does now
        status, body = await change
        assert status == 200 and body["generation"] == 2 and body["converged"] is True
        assert [(p["proxy"], p["generation"], p["live"]) for p in body["proxies"]] == [("edge-1", 2, True)]

        # A refusal is listed with its reason, and does not hold the change up.
        change = asyncio.ensure_future(ctl.call(session, "POST", "/v1/flags/beta/kill"))
        third = await confirming
        assert isinstance(third, wire.Snapshot) and third.generation == 3
        # It reports the refusal; generation 3 is not sent to it again (it waits for the next one).
        assert await ctl.poll(session, "edge-1", 2, wait=0.1, refused=3, reason="no CA file") is None
        status, body = await change
        assert status == 200 and body["converged"] is True
        status, listing = await ctl.call(session, "GET", "/v1/proxies")
        assert listing["proxies"][0]["refused"] == {"generation": 3, "reason": "no CA file"}
        assert listing["proxies"][0]["lag"] == 1

        # edge-1 catches up with the next generation as a whole.
        following = asyncio.ensure_future(ctl.poll(session, "edge-1", 2, wait=20, refused=3, reason="no CA file"))

        status, body = await ctl.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                      {"weights": {"v1": 1, "v9": 1}})
        assert status == 422 and body["field"] == "services.shop.rules[0].split.v9"
        change = asyncio.ensure_future(ctl.call(session, "POST", "/v1/rollback", {"generation": 1}))
        fourth = await following
        assert isinstance(fourth, wire.Snapshot) and fourth.generation == 4 and fourth.tables == first.tables
        await ctl.poll(session, "edge-1", 4, wait=0.1)
        status, body = await change
        assert status == 200 and body["generation"] == 4 and body["converged"] is True
        async with session.get(ctl.base + "/metrics", headers=ctl.headers) as response:
            text = await response.text()
        assert "turnout_controller_generation 4.0" in text and 'turnout_controller_proxy_lag{proxy="edge-1"}' in text


@pytest.mark.parametrize(("method", "query", "body", "status"), [
    ("GET", "", None, 422), ("GET", "?proxy=", None, 422), ("GET", "?proxy=a&generation=-1", None, 400),
    ("GET", "?proxy=a&generation=9" + "9" * 30, None, 400), ("GET", "?proxy=a&wait=x", None, 400),
    ("POST", "", b"not json", 400), ("POST", "", b'{"v": 1, "kind": "ack", "generation": 1}', 400),
    ("POST", "", wire.encode(wire.Poll("", "", 0, 0, "", {})), 422),
    ("POST", "", b'{"v": 1, "kind": "poll", "proxy": "a"}', 400),
])
async def test_bad_watches_are_4xx(controller, method: str, query: str, body: bytes | None, status: int) -> None:
    ctl = controller()
    async with aiohttp.ClientSession() as session, \
            session.request(method, f"{ctl.base}/v1/watch{query}", data=body, headers=ctl.headers) as r:
        assert r.status == status and "error" in await r.json()


async def test_every_route_needs_the_token(controller) -> None:
    ctl = controller()
    routes = [("GET", "/v1/state"), ("GET", "/v1/proxies"), ("GET", "/v1/watch?proxy=a&generation=0"),
              ("POST", "/v1/watch"), ("GET", "/metrics"), ("GET", "/v1/generations"), ("POST", "/v1/rollback"),
              ("PUT", "/v1/services/shop/rules/default/weights"), ("GET", "/v1/rollouts"), ("POST", "/v1/rollouts"),
              ("GET", "/v1/rollouts/shop"), ("POST", "/v1/rollouts/shop/abort"), ("GET", "/nope")]
    async with aiohttp.ClientSession() as session:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                async with session.request(method, ctl.base + path, headers=headers) as response:
                    assert response.status == 401, (method, path)
        status, body = await ctl.call(session, "GET", "/v1/state", Origin="http://evil.example")
        assert status == 403 and "Origin" in body["error"]
        for probe in ("/ready", "/live"):  # health probes carry no token
            async with session.get(ctl.base + probe) as response:
                assert response.status == 200


async def test_one_controller_per_state_file_and_kill_9_loses_no_answered_change(controller) -> None:
    ctl = controller()
    second = subprocess.run([sys.executable, "-m", "controller", "--config", str(ctl.path)], capture_output=True,
                            text=True, timeout=20, cwd=ROOT)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"turnout controller: {ctl.path.parent / 'controller.state.json'} is in use by another controller "
        f"(pid {ctl.process.pid})"]
    answered: list[int] = []
    async with aiohttp.ClientSession() as session:
        for i in range(8):
            status, body = await ctl.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                          {"weights": {"v1": 100 - i * 10, "v2": i * 10 + 1}})
            assert status == 200
            answered.append(body["generation"])
        _, before = await ctl.call(session, "GET", "/v1/state")
        tables_before = await ctl.poll(session, "edge-1", 0)
        os.kill(ctl.process.pid, signal.SIGKILL)
        ctl.process.wait(10)
        again = controller()
        _, after = await again.call(session, "GET", "/v1/state")
        assert after["generation"] == answered[-1] + 1  # every answered change kept, then the restart's
        assert after["services"] == before["services"] and after["flags"] == before["flags"]
        snapshot = await again.poll(session, "edge-1", 0)
        assert isinstance(snapshot, wire.Snapshot) and isinstance(tables_before, wire.Snapshot)
        assert snapshot.tables == tables_before.tables  # every sticky user where they were
        _, listing = await again.call(session, "GET", "/v1/generations")
        assert [g["generation"] for g in listing["generations"]][:3] == [answered[-1] + 1, answered[-1], answered[-2]]


def test_bad_config_names_the_file_and_field(tmp_path: Path) -> None:
    document = controller_config()
    document["controller"] = {"listen": "0.0.0.0:9911"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    result = subprocess.run([sys.executable, "-m", "controller", "--config", str(path)], capture_output=True,
                            text=True, timeout=20, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"turnout controller: {path}: controller.listen: 0.0.0.0:9911 is not a "
                                     "loopback address: set token_file or token_env so that the token is chosen, "
                                     "not generated")
    document = controller_config({"v1": 1, "canry": 1})
    path.write_text(yaml.safe_dump(document))
    result = subprocess.run([sys.executable, "-m", "controller", "--config", str(path)], capture_output=True,
                            text=True, timeout=20, cwd=ROOT)
    assert result.returncode == 2 and "services.shop.rules[0].split.canry: unknown version 'canry'" in result.stderr


async def test_kill_9_at_random_moments_of_a_stream_of_changes(controller, tmp_path: Path) -> None:
    import json
    import random

    rng = random.Random(20261201)
    ctl = controller()
    state_file = tmp_path / "controller.state.json"
    async with aiohttp.ClientSession() as session:
        for _round in range(20):
            answered: list[tuple[int, str]] = []

            async def stream(ctl: Controller, answered: list[tuple[int, str]]) -> None:
                while True:
                    share = rng.randrange(0, 101)
                    try:
                        status, body = await ctl.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                                      {"weights": {"v1": 100 - share, "v2": share}})
                    except aiohttp.ClientError:
                        return  # killed mid-request: that change was never answered
                    assert status == 200, body
                    answered.append((body["generation"], body["what"]))

            task = asyncio.ensure_future(stream(ctl, answered))
            await asyncio.sleep(rng.uniform(0.02, 0.3))
            os.kill(ctl.process.pid, signal.SIGKILL)
            ctl.process.wait(10)
            await task
            ctl.stop()
            ctl = controller()  # restarts on the same state file
            saved = json.loads(state_file.read_text())  # valid JSON, whole
            history = {entry["generation"]: entry for entry in saved["history"]}
            for generation, what in answered:
                assert history[generation]["what"] == what  # every answered change is kept
            restart, before = saved["history"][-1], saved["history"][-2]
            assert restart["what"] == "start" and restart["generation"] == before["generation"] + 1
            assert restart["tables"] == before["tables"]  # the same buckets: nobody moved by the restart
            status, state = await ctl.call(session, "GET", "/v1/state")
            assert status == 200 and state["generation"] == restart["generation"]
            if answered:
                last_answered = answered[-1][0]
                assert before["generation"] >= last_answered  # a later change may have been written unanswered
        assert not list(tmp_path.glob(".controller.state.json.*.tmp"))  # leftovers cleaned at each start


async def test_rollout_requests_that_cannot_apply_are_4xx_and_change_nothing(controller, tmp_path: Path) -> None:
    import json

    document = {**controller_config({"v1": 100, "v2": 0}), "rollouts": {"shop": {"steps": [{"setWeight": 10},
                                                                                         {"pause": {}}]}}}
    ctl = controller(document)
    state_file = tmp_path / "controller.state.json"
    async with aiohttp.ClientSession() as session:
        for body, status, field in [
            ({"service": "nope", "to": "v2"}, 404, "service"),
            ({"service": "shop", "to": "v9"}, 422, "endpoints"),  # a new version needs its endpoints
            ({"service": "shop", "to": "v1"}, 409, "to"),  # already stable
            ({"service": "shop", "to": "v2", "spec": {"steps": [{"setWeight": 150}]}}, 422, "spec.steps[0].setWeight"),
            ({"service": "shop", "to": "v2", "spec": {"steps": [{"analysis": {"templates": ["x"]}}]}}, 422,
             "spec.steps[0].analysis.templates[0]"),
            ({"service": "shop", "to": "v3", "endpoints": ["not an endpoint"]}, 422, "services.shop.versions.v3"),
            ({"service": "shop"}, 422, "to"),
            ({"service": "shop", "to": "v2", "extra": 1}, 422, "body"),
        ]:
            before = state_file.read_bytes()
            got, answer = await ctl.call(session, "POST", "/v1/rollouts", body)
            assert got == status and answer["field"].startswith(field), (body, answer)
            assert state_file.read_bytes() == before  # nothing written
        got, answer = await ctl.call(session, "GET", "/v1/rollouts/shop")
        assert got == 404
        got, answer = await ctl.call(session, "POST", "/v1/rollouts", {"service": "shop", "to": "v2"})
        assert got == 201 and answer["id"] == "shop-1"
        got, answer = await ctl.call(session, "POST", "/v1/rollouts", {"service": "shop", "to": "v2"})
        assert got == 409 and "shop-1" in answer["error"]
        got, answer = await ctl.call(session, "POST", "/v1/rollouts/shop/launch")
        assert got == 404 and "promote" in answer["error"]
        saved = json.loads(state_file.read_text())["rollouts"]["rollouts"]["shop"]
        got, answer = await ctl.call(session, "POST", "/v1/rollouts/shop/retry")  # not Aborted
        assert got == 409 and "cannot retry" in answer["error"]
        got, answer = await ctl.call(session, "POST", "/v1/rollouts/shop/undo")
        assert got == 409
        assert json.loads(state_file.read_text())["rollouts"]["rollouts"]["shop"]["history"] == saved["history"]
        # A command that cannot be written is refused and changes nothing (a directory where the state
        # file was: the rename over it fails, for root too).
        kept = state_file.read_bytes()
        state_file.unlink()
        state_file.mkdir()
        try:
            got, answer = await ctl.call(session, "POST", "/v1/rollouts/shop/abort")
            _, now = await ctl.call(session, "GET", "/v1/rollouts/shop")
        finally:
            state_file.rmdir()
            state_file.write_bytes(kept)
        assert got == 507 and "cannot write the state file" in answer["error"], answer
        assert now["phase"] != "Aborted"
