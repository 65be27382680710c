"""Several workers behind one supervisor: the admin API sees and changes all of them, one scrape
counts every worker's requests, and a replaced worker holds the same bucket tables as its siblings."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .test_admin_changes import Admin, config_text, wait_admin


async def fresh_versions(port: int, users: range) -> dict[str, str]:
    """Each request on a new connection, so that they spread over the workers."""
    seen = {}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in users:
            async with session.get(f"http://127.0.0.1:{port}/", headers={"X-User": f"u{i}"}) as response:
                assert response.status == 200
                seen[f"u{i}"] = response.headers["X-Version"]
    return seen


async def test_admin_changes_reach_every_worker_and_metrics_sum_them(upstreams, spawn_proxy, tmp_path: Path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    process = spawn_proxy(config_text(v1.address, v2.address, {"v1": 50, "v2": 50}), workers=2)
    await wait_admin(process)
    admin = Admin(process, tmp_path)
    async with aiohttp.ClientSession() as session:
        for _ in range(100):  # both workers up and serving generation 1
            status, state = await admin.call(session, "GET", "/v1/state")
            if len(state["workers"]) == 2:
                break
            await asyncio.sleep(0.05)
        assert [w["generation"] for w in state["workers"]] == [1, 1]
        assert len({w["pid"] for w in state["workers"]}) == 2

        sent = Counter((await fresh_versions(process.port, range(200))).values())
        async with session.get(admin.base + "/metrics", headers=admin.headers) as response:
            text = await response.text()
        counted = {(s.labels["version"]): s.value for family in text_string_to_metric_families(text)
                   for s in family.samples
                   if s.name == "turnout_requests_total" and s.labels.get("code_class") == "2xx"}
        assert counted == {"v1": sent["v1"], "v2": sent["v2"]}
        per_worker = [s.value for family in text_string_to_metric_families(text) for s in family.samples
                      if s.name == "turnout_generation"]
        assert per_worker == [1, 1]

        status, body = await admin.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                        {"weights": {"v1": 0, "v2": 1}})
        assert status == 200 and body["converged"] is True
        assert [w["generation"] for w in body["workers"]] == [2, 2]
        assert set((await fresh_versions(process.port, range(60))).values()) == {"v2"}


async def test_a_replaced_worker_has_the_same_tables(upstreams, spawn_proxy, tmp_path: Path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    process = spawn_proxy(config_text(v1.address, v2.address, {"v1": 70, "v2": 30}), workers=2)
    await wait_admin(process)
    admin = Admin(process, tmp_path)
    async with aiohttp.ClientSession() as session:
        for weights in ({"v1": 50, "v2": 50}, {"v1": 80, "v2": 20}):  # history a fresh start would not have
            status, body = await admin.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                            {"weights": weights})
            assert body["converged"] is True
        before = await fresh_versions(process.port, range(300))
        status, state = await admin.call(session, "GET", "/v1/state")
        assert status == 200
        victim = state["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        for _ in range(200):
            _, state = await admin.call(session, "GET", "/v1/state")
            pids = [w["pid"] for w in state["workers"]]
            if len(pids) == 2 and victim not in pids:
                break
            await asyncio.sleep(0.05)
        assert len(pids) == 2 and victim not in pids
        assert [w["generation"] for w in state["workers"]] == [3, 3]
        assert await fresh_versions(process.port, range(300)) == before
    process.signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 20) == 0
