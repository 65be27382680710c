"""The layers of the routing state (the file < admin changes) through a real Turnout process: admin
changes build on the file as last loaded, a reload must be valid by itself, what admin changes hide
of the file is visible and can be reset, and a rollback restores a generation exactly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .test_admin_changes import Admin, versions, wait_admin

ROOT = Path(__file__).resolve().parents[2]


def layered_config(v1: str, v2: str, weights: dict[str, int], flag_share: int = 20) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "services": {"shop": {"versions": {"v1": [v1], "v2": [v2]},
                              "rules": [{"name": "default", "split": weights, "sticky": {"header": "x-user"}}]}},
        "flags": {"beta": {"variants": {"on": True, "off": False}, "default": "off",
                           "rollout": {"on": flag_share, "off": 100 - flag_share}}},
    }


async def start(spawn_proxy: Any, tmp_path: Path, v1: str, v2: str, weights: dict[str, int]) -> tuple[Any, Admin]:
    process = spawn_proxy(yaml.safe_dump(layered_config(v1, v2, weights)))
    await wait_admin(process)
    return process, Admin(process, tmp_path)


async def reload(process: Any, admin: Admin, session: aiohttp.ClientSession) -> int:
    """SIGHUP, then the generation once the log says how the reload went."""
    marks = process.output().count("reload")
    process.signal(signal.SIGHUP)
    for _ in range(200):
        if process.output().count("reload") > marks:
            break
        await asyncio.sleep(0.02)
    _, state = await admin.call(session, "GET", "/v1/state")
    return int(state["generation"])


async def test_admin_changes_build_on_the_loaded_file_and_a_reload_must_be_valid_alone(
        upstreams, spawn_proxy, tmp_path: Path) -> None:
    v1, v2, other = await upstreams("v1"), await upstreams("v2"), await upstreams("other")
    process, admin = await start(spawn_proxy, tmp_path, v1.address, v2.address, {"v1": 100, "v2": 0})
    path = process.config_path
    async with aiohttp.ClientSession() as session:
        # An edit that was never reloaded (v1 now points elsewhere) ...
        path.write_text(yaml.safe_dump(layered_config(other.address, v2.address, {"v1": 100, "v2": 0})))
        # ... does not go live with an unrelated admin change.
        status, body = await admin.call(session, "POST", "/v1/flags/beta/disable")
        assert status == 200 and body["generation"] == 2
        assert set((await versions(session, process.port, range(20))).values()) == {"v1"}
        assert not other.seen
        _, state = await admin.call(session, "GET", "/v1/state")
        assert state["services"]["shop"]["versions"]["v1"]["endpoints"] == [v1.address]

        # An admin overlay replaces shop's rules; a file whose own split names an unknown version is
        # still refused on SIGHUP, though the overlay would hide that split.
        status, body = await admin.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                        {"weights": {"v1": 50, "v2": 50}})
        assert status == 200 and body["generation"] == 3
        bad = layered_config(v1.address, v2.address, {"v1": 995000, "canry": 5000})
        path.write_text(yaml.safe_dump(bad))
        assert await reload(process, admin, session) == 3
        assert "reload refused, still serving generation 3" in process.output()
        assert "services.shop.rules[0].split.canry: unknown version 'canry'" in process.output()
        check = subprocess.run([sys.executable, "-m", "turnout", "check", "--config", str(path)],
                               capture_output=True, text=True, cwd=ROOT)
        assert check.returncode == 2 and "canry" in check.stderr  # `turnout check` says the same
        status, body = await admin.call(session, "POST", "/v1/reload")
        assert status == 422 and body["field"] == "services.shop.rules[0].split.canry"
        async with session.get(admin.base + "/metrics", headers=admin.headers) as response:
            metrics = await response.text()
        assert 'turnout_config_reloads_total{result="failure"} 2.0' in metrics


async def test_overrides_are_visible_logged_and_reset_to_the_file(upstreams, spawn_proxy, tmp_path: Path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    process, admin = await start(spawn_proxy, tmp_path, v1.address, v2.address, {"v1": 100, "v2": 0})
    path = process.config_path
    async with aiohttp.ClientSession() as session:
        status, body = await admin.call(session, "POST", "/v1/reset", {"all": True})
        assert status == 409 and "no admin changes" in body["error"]  # nothing to reset: nothing changes
        status, body = await admin.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                        {"weights": {"v1": 0, "v2": 100}})
        assert body["generation"] == 2
        status, body = await admin.call(session, "PUT", "/v1/flags/beta/rollout", {"rollout": {"on": 50, "off": 50}})
        assert body["generation"] == 3
        _, state = await admin.call(session, "GET", "/v1/state")
        assert state["services"]["shop"]["overridden"] == {"parts": ["rules"], "since": 2}
        assert state["flags"]["beta"]["overridden"] == {"parts": ["flag"], "since": 3}

        # The file's own weights change; SIGHUP keeps the admin's, and says so.
        path.write_text(yaml.safe_dump(layered_config(v1.address, v2.address, {"v1": 30, "v2": 70}, 10)))
        assert await reload(process, admin, session) == 4
        assert "services.shop: admin changes since generation 2 shadow the file (rules)" in process.output()
        assert set((await versions(session, process.port, range(30))).values()) == {"v2"}

        status, body = await admin.call(session, "POST", "/v1/reset", {"services": ["nope"]})
        assert status == 409 and body["field"] == "services"
        status, body = await admin.call(session, "POST", "/v1/reset", {"services": ["shop"]})
        assert status == 200 and body["generation"] == 5 and body["what"] == "reset service shop"
        _, state = await admin.call(session, "GET", "/v1/state")
        assert "overridden" not in state["services"]["shop"]
        assert state["services"]["shop"]["rules"][0]["split"] == {"v1": 30, "v2": 70}  # the file shows through
        assert state["flags"]["beta"]["overridden"]["since"] == 3  # untouched
        status, body = await admin.call(session, "POST", "/v1/reset", {"flags": ["beta"]})
        assert status == 200
        _, state = await admin.call(session, "GET", "/v1/state")
        assert state["overridden"] == {} and state["flags"]["beta"]["rollout"] == {"on": 10.0, "off": 90.0}


async def test_rollback_restores_a_generation_exactly_whatever_the_file_says(
        upstreams, spawn_proxy, tmp_path: Path) -> None:
    v1, v2, v1b = await upstreams("v1"), await upstreams("v2"), await upstreams("v1b")
    process, admin = await start(spawn_proxy, tmp_path, v1.address, v2.address, {"v1": 70, "v2": 30})
    path = process.config_path
    users = range(300)
    async with aiohttp.ClientSession() as session:
        at_one = await versions(session, process.port, users)
        _, first = await admin.call(session, "GET", "/v1/state")
        status, _ = await admin.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                     {"weights": {"v1": 50, "v2": 50}})
        assert status == 200
        # The file now says other things: v1 on another endpoint, a third version, other weights and flag.
        edited = layered_config(v1b.address, v2.address, {"v1": 90, "v2": 10}, 60)
        edited["services"]["shop"]["versions"]["v3"] = [v1b.address]
        path.write_text(yaml.safe_dump(edited))
        assert await reload(process, admin, session) == 3
        status, body = await admin.call(session, "POST", "/v1/rollback", {"generation": 1})
        assert status == 200 and body["generation"] == 4
        assert body["differs_from_file"] == ["services.shop", "flags.beta"]
        assert "generation 4: services.shop, flags.beta differ from turnout.yaml" in process.output()
        _, now = await admin.call(session, "GET", "/v1/state")
        for part in ("services", "flags"):
            for entry in now[part].values():
                entry.pop("overridden", None)
            assert now[part] == first[part]  # same services, versions, endpoints, rules, buckets, flags
        assert await versions(session, process.port, users) == at_one  # the very same users on each version
        assert not v1b.seen
        status, body = await admin.call(session, "GET", "/v1/generations/1/diff/4")
        assert body["changes"] == []


async def test_a_change_that_cannot_be_persisted_is_refused_and_changes_nothing(
        upstreams, spawn_proxy, tmp_path: Path) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    process, admin = await start(spawn_proxy, tmp_path, v1.address, v2.address, {"v1": 100, "v2": 0})
    state_file = process.config_path.with_name("turnout.yaml.state.json")
    saved = state_file.read_bytes()
    async with aiohttp.ClientSession() as session:
        state_file.unlink()
        state_file.mkdir()  # the rename over it fails (root ignores permissions; a directory does not)
        status, body = await admin.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                        {"weights": {"v1": 0, "v2": 100}})
        assert status == 507 and "cannot write the state file" in body["error"] and body["field"] == "state file"
        assert set((await versions(session, process.port, range(30))).values()) == {"v1"}  # not applied
        _, listing = await admin.call(session, "GET", "/v1/generations")
        assert listing["current"] == 1 and [g["generation"] for g in listing["generations"]] == [1]
        state_file.rmdir()
        status, body = await admin.call(session, "PUT", "/v1/services/shop/rules/default/weights",
                                        {"weights": {"v1": 0, "v2": 100}})
        assert status == 200 and body["generation"] == 2  # the refused change used no number
        assert set((await versions(session, process.port, range(30))).values()) == {"v2"}
    assert saved != state_file.read_bytes()


def test_a_start_on_a_state_file_it_cannot_read_or_replace_stops_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(layered_config("127.0.0.1:1", "127.0.0.1:2", {"v1": 1, "v2": 0})))
    (tmp_path / "turnout.yaml.state.json").mkdir()  # neither readable as a state file nor replaceable
    result = subprocess.run([sys.executable, "-m", "proxy", "--config", str(path)], capture_output=True,
                            text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("turnout.yaml.state.json: cannot read it: Is a directory")
