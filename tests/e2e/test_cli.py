"""The ``turnout`` command against a running proxy, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from ..integration.test_admin_changes import config_text, versions, wait_admin


def turnout(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turnout", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **env})


async def test_status_weights_generations_diff_rollback(upstreams, spawn_proxy, tmp_path: Path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    process = spawn_proxy(config_text(v1.address, v2.address))
    await wait_admin(process)
    env = {"TURNOUT_ADMIN_URL": process.admin_url(),
           "USER": "alice"}
    token_file = str(tmp_path / "admin.token")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return turnout(*args, "--token-file", token_file, env=env)

    status = await asyncio.to_thread(run, "status")
    assert status.returncode == 0, status.stderr
    assert "generation 1" in status.stdout and "split v1=100 v2=0" in status.stdout

    changed = await asyncio.to_thread(run, "weights", "set", "shop", "v1=0", "v2=1")
    assert (changed.returncode, changed.stdout.strip()) == (0, "generation 2: weights of shop/default: v1=0, v2=1")
    async with aiohttp.ClientSession() as session:
        assert set((await versions(session, process.port, range(50))).values()) == {"v2"}

    bad = await asyncio.to_thread(run, "weights", "set", "shop", "v1=1", "v7=1")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "turnout: 422: unknown version 'v7' (versions: v1, v2) (field: services.shop.rules[1].split.v7)"]
    stale = await asyncio.to_thread(run, "weights", "set", "shop", "v1=1", "--if-match", "1")
    assert stale.returncode == 1 and "409" in stale.stderr

    listing = await asyncio.to_thread(run, "generations", "--json")
    answer = json.loads(listing.stdout)
    assert answer["generations"][0]["who"] == "alice"
    difference = await asyncio.to_thread(run, "diff", "1", "2")
    assert difference.stdout.splitlines() == ["services.shop.rules[1].split.v1: 100 -> 0",
                                              "services.shop.rules[1].split.v2: 0 -> 1"]
    back = await asyncio.to_thread(run, "rollback", "1")
    assert back.stdout.strip() == "generation 3: rollback to generation 1"

    # The file changes; `turnout reload` applies it as SIGHUP would (rollback to 1 left no admin changes).
    process.config_path.write_text(config_text(v1.address, v2.address, {"v1": 0, "v2": 1}))
    reloaded = await asyncio.to_thread(run, "reload")
    assert reloaded.stdout.strip() == "generation 4: reload turnout.yaml", reloaded.stderr
    async with aiohttp.ClientSession() as session:
        assert set((await versions(session, process.port, range(30))).values()) == {"v2"}

    no_token = await asyncio.to_thread(turnout, "status", "--token", "wrong", env=env)
    assert no_token.returncode == 1 and "401" in no_token.stderr
    unreachable = await asyncio.to_thread(turnout, "status", "--admin", "http://127.0.0.1:9", "--token", "x", env=env)
    assert unreachable.returncode == 1 and "cannot reach the admin API" in unreachable.stderr


async def test_explain_and_dry_run(upstreams, spawn_proxy, tmp_path: Path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    process = spawn_proxy(config_text(v1.address, v2.address, {"v1": 90, "v2": 10}))
    await wait_admin(process)
    env = {"TURNOUT_ADMIN_URL": process.admin_url()}
    token = ["--token-file", str(tmp_path / "admin.token")]
    why = await asyncio.to_thread(turnout, "explain", "--host", "shop.test", "-H", "X-Beta=1", *token, env=env)
    assert why.returncode == 0, why.stderr
    assert "rule beta: matched" in why.stdout and "-> version v2" in why.stdout
    preview = await asyncio.to_thread(turnout, "weights", "set", "shop", "v1=50", "v2=50", "--dry-run", *token, env=env)
    assert preview.stdout.splitlines() == ["shop/default: 40.0% of sticky users would move",
                                           "  v1 -> v2: 4000 buckets (40.0%)"]


async def test_flags_commands_and_their_metrics(upstreams, spawn_proxy, tmp_path: Path) -> None:
    up = await upstreams("v1")
    process = spawn_proxy(yaml.safe_dump({
        "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
        "services": {"s": {"versions": {"v1": [up.address]}, "split": {"v1": 1}, "sticky": {"header": "x-user"},
                           "inject_flags": {"flags": ["checkout"]}}},
        "flags": {"checkout": {"variants": {"on": True, "off": False}, "default": "off",
                               "rollout": {"on": 10, "off": 90}}},
    }, sort_keys=False))
    await wait_admin(process)
    env = {"TURNOUT_ADMIN_URL": process.admin_url()}
    token = ["--token-file", str(tmp_path / "admin.token")]
    listed = await asyncio.to_thread(turnout, "flags", "list", *token, env=env)
    assert "checkout" in listed.stdout and "rollout on=10% off=90%" in listed.stdout
    raised = await asyncio.to_thread(turnout, "flags", "set", "checkout", "on=25", "off=75", *token, env=env)
    assert raised.stdout.strip() == "generation 2: rollout of flag checkout: on=25.0%, off=75.0%", raised.stderr
    killed = await asyncio.to_thread(turnout, "flags", "kill", "checkout", *token, env=env)
    assert killed.stdout.strip() == "generation 3: kill switch: flag checkout"
    bad = await asyncio.to_thread(turnout, "flags", "set", "checkout", "on=25", "off=70", *token, env=env)
    assert bad.returncode == 1 and "percentages must add up to 100" in bad.stderr
    async with aiohttp.ClientSession() as session:
        for i in range(5):
            async with session.get(f"http://127.0.0.1:{process.port}/", headers={"X-User": f"u{i}"}) as response:
                assert response.status == 200
        async with session.get(env["TURNOUT_ADMIN_URL"] + "/metrics",
                               headers={"Authorization": "Bearer " + (tmp_path / "admin.token").read_text().strip()}
                               ) as response:
            text = await response.text()
    assert 'turnout_flag_evaluations_total{flag="checkout",variant="off"} 5.0' in text  # killed: all off


async def test_status_shows_overrides_and_reset_drops_them(upstreams, spawn_proxy, tmp_path: Path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    process = spawn_proxy(config_text(v1.address, v2.address))
    await wait_admin(process)
    env = {"TURNOUT_ADMIN_URL": process.admin_url()}
    token_file = str(tmp_path / "admin.token")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return turnout(*args, "--token-file", token_file, env=env)

    assert (await asyncio.to_thread(run, "weights", "set", "shop", "v1=0", "v2=1")).returncode == 0
    status = await asyncio.to_thread(run, "status")
    assert ("  admin changes since generation 2 override the config file: rules (turnout reset drops them)"
            in status.stdout.splitlines())
    neither = await asyncio.to_thread(run, "reset")
    assert neither.returncode == 1 and "reset needs SERVICE names" in neither.stderr
    reset = await asyncio.to_thread(run, "reset", "shop")
    assert (reset.returncode, reset.stdout.strip()) == (0, "generation 3: reset service shop")
    assert "override" not in (await asyncio.to_thread(run, "status")).stdout
    again = await asyncio.to_thread(run, "reset", "--all")
    assert again.returncode == 1 and "409: there are no admin changes to reset" in again.stderr
    async with aiohttp.ClientSession() as session:
        assert set((await versions(session, process.port, range(30))).values()) == {"v1"}  # the file's 100/0


async def test_the_cli_drives_the_fleet_through_the_controller(upstreams, tmp_path: Path) -> None:
    from ..integration.test_managed import Setup, until

    v1, v2 = await upstreams("v1"), await upstreams("v2")
    setup = Setup(tmp_path, v1.address, v2.address)
    try:
        edge = setup.start_proxy("edge-0")
        env = {"TURNOUT_CONTROLLER_URL": setup.controller.base}
        token_file = str(tmp_path / "controller.token")

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return turnout(*args, "--token-file", token_file, env=env)

        async def listed() -> bool:
            return "edge-0" in (await asyncio.to_thread(run, "proxies")).stdout
        await until(listed)
        proxies = (await asyncio.to_thread(run, "proxies")).stdout.splitlines()
        assert proxies[0] == "generation 1" and proxies[1].split() == ["PROXY", "ADDRESS", "GEN", "LAG", "LIVE",
                                                                     "SEEN", "REFUSED"]
        assert proxies[2].split()[:5] == ["edge-0", f"127.0.0.1:{edge.port}", "1", "0", "yes"]
        assert (await asyncio.to_thread(run, "status")).stdout.startswith("generation 1, 1 live proxy\n")
        changed = await asyncio.to_thread(run, "weights", "set", "shop", "v1=0", "v2=1")
        assert changed.stdout.strip() == "generation 2: weights of shop/default: v1=0, v2=1", changed.stderr
        async with aiohttp.ClientSession() as session:
            assert set((await versions(session, edge.port, range(30))).values()) == {"v2"}
        answer = json.loads((await asyncio.to_thread(run, "proxies", "--json")).stdout)
        assert answer["proxies"][0]["generation"] == 2
        down = await asyncio.to_thread(turnout, "status", "--controller", "http://127.0.0.1:9", "--token", "x",
                                       env={})
        assert down.returncode == 1 and "cannot reach the controller at http://127.0.0.1:9" in down.stderr
    finally:
        setup.stop()


async def test_rollout_commands_and_watch_as_plain_lines(upstreams, tmp_path: Path) -> None:
    from ..integration.test_managed import Setup, until
    from ..integration.test_rollouts import Load

    templates = {"ok": {"metrics": [{"name": "success", "condition": "success_rate >= 0.95", "interval": "1s",
                                     "minRequests": 5}]}}
    spec = {"steps": [{"setWeight": 25}, {"analysis": {"templates": ["ok"]}}, {"pause": {}}], "scaleDownDelay": 1}
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    setup = Setup(tmp_path, v1.address, v2.address, {"v1": 100, "v2": 0}, templates=templates,
                  rollouts={"shop": spec})
    try:
        edge = setup.start_proxy("edge-0")
        env = {"TURNOUT_CONTROLLER_URL": setup.controller.base}
        token_file = str(tmp_path / "controller.token")

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return turnout("rollout", *args, "--token-file", token_file, env=env)

        async def listed() -> bool:
            return "edge-0" in (await asyncio.to_thread(turnout, "proxies", "--token-file", token_file, env=env)).stdout
        await until(listed)
        load = Load([edge.port])
        load.start()
        assert (await asyncio.to_thread(run, "list")).stdout.strip() == "no rollouts yet (specs for: shop)"
        started = await asyncio.to_thread(run, "start", "shop", "--to", "v2")
        assert started.returncode == 0 and started.stdout.startswith("rollout shop-1 started: v1 -> v2 (canary)")
        again = await asyncio.to_thread(run, "start", "shop", "--to", "v2")
        assert again.returncode == 1 and again.stderr.startswith("turnout: 409: rollout shop-1 of shop is")
        assert len(again.stderr.strip().splitlines()) == 1

        async def paused() -> bool:
            answer = json.loads((await asyncio.to_thread(run, "status", "shop", "--json")).stdout)
            return bool(answer["phase"] == "Paused")
        await until(paused, 30)
        status = (await asyncio.to_thread(run, "status", "shop")).stdout
        assert "phase Paused" in status and "> " in status and "pause until promoted" in status
        refused = await asyncio.to_thread(run, "undo", "shop")
        assert refused.returncode == 1 and "it cannot undo (it can: resume, promote, promote-full, abort)" in \
            refused.stderr

        # watch, piped: one plain line per change, exit 0 once Succeeded.
        watcher = subprocess.Popen([sys.executable, "-m", "turnout", "rollout", "watch", "shop", "--token-file",
                                    token_file], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, **env})
        await asyncio.sleep(1)
        promoted = await asyncio.to_thread(run, "promote", "shop")
        assert promoted.returncode == 0 and "promoted by" in promoted.stdout
        out, err = await asyncio.to_thread(watcher.communicate, timeout=30)
        assert watcher.returncode == 0, err
        lines = out.strip().splitlines()
        assert "shop-1 Paused step 2/" in lines[0] and lines[-1].split()[2] == "Succeeded", lines
        assert all(line[2] == ":" and " shop-1 " in line for line in lines)  # "HH:MM:SS shop-1 Phase step …"
        history = (await asyncio.to_thread(run, "history", "shop")).stdout
        assert "promoted by" in history and "analysis" in history
        # A failing rollout: watch exits 1.
        started = await asyncio.to_thread(run, "start", "shop", "--to", "v1")
        assert started.returncode == 0
        await asyncio.to_thread(run, "abort", "shop")
        watched = await asyncio.to_thread(run, "watch", "shop")
        assert watched.returncode == 1 and "Aborted" in watched.stdout
        await load.finish()
    finally:
        setup.stop()


async def test_operator_basics_version_json_anywhere_curl_headers_endpoints_and_a_config_elsewhere(
        upstreams, spawn_proxy, tmp_path: Path) -> None:
    from ..integration.test_managed import free_port

    v1, v2, v3 = await upstreams("v1"), await upstreams("v2"), await upstreams("v3")
    document = yaml.safe_load(config_text(v1.address, v2.address, {"v1": 90, "v2": 10}))
    document["admin"]["listen"] = f"127.0.0.1:{free_port()}"  # a config that names its admin port, as a user's does
    process = spawn_proxy(yaml.safe_dump(document))
    await wait_admin(process)
    elsewhere = {"HOME": str(tmp_path)}  # run from another directory, found through the config file only

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "turnout", *args], capture_output=True, text=True, timeout=30,
                              env={**os.environ, **env}, cwd="/")

    version = await asyncio.to_thread(run, "--version")
    assert version.returncode == 0 and version.stdout.startswith("turnout 0.")
    config = str(process.config_path)
    before = await asyncio.to_thread(run, "--json", "status", "--config", config, **elsewhere)  # --json first
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["generation"] == 1
    via_env = await asyncio.to_thread(run, "status", "--json", TURNOUT_CONFIG=config)  # --json after
    assert json.loads(via_env.stdout)["generation"] == 1
    why = await asyncio.to_thread(run, "explain", "--host", "shop.test", "-H", "X-Beta: 1", "--config", config)
    assert "rule beta: matched" in why.stdout, why.stderr

    added = await asyncio.to_thread(run, "versions", "set", "shop", "v2", v2.address, v3.address, "--config", config)
    assert added.returncode == 0 and "endpoints of shop/v2" in added.stdout, added.stderr
    drained = await asyncio.to_thread(run, "versions", "drain", "shop", "v2", v3.address, "--config", config)
    assert drained.returncode == 0 and f"draining {v3.address} of shop/v2" in drained.stdout, drained.stderr
    status = (await asyncio.to_thread(run, "status", "--config", config)).stdout
    assert f"version v2         {v2.address}  draining {v3.address}" in status
    assert "flag " not in status or "rollout" in status
    async with aiohttp.ClientSession() as session:
        seen = set()
        for i in range(40):  # v2's new requests all reach its one serving endpoint
            async with session.get(f"http://127.0.0.1:{process.port}/", headers={"X-Beta": "1", "X-User": str(i)}) as r:
                seen.add(r.headers["X-Version"])
        assert seen == {"v2"} and v3.seen == []
    wrong = await asyncio.to_thread(run, "versions", "drain", "shop", "v2", "127.0.0.1:1", "--config", config)
    assert wrong.returncode == 1 and "not an endpoint of shop/v2" in wrong.stderr
