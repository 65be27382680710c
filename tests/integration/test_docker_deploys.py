"""Deploys (immutable infrastructure) on a real engine: new containers of an image become a new version,
a rollout moves the traffic, the old containers go once the old version left the routing; an aborted
deploy removes its new containers and never touches the old ones; a missing image changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from ..dockerengine import Engine, controller_and_edge, docker_engine  # noqa: F401 - the fixture
from .test_controller import Controller
from .test_managed import free_port, until

SPEC = {"strategy": "canary", "steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}], "scaleDownDelay": "2s"}


async def versions_seen(port: int, count: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            async with session.get(f"http://127.0.0.1:{port}/", headers={"Host": "shop", "X-User": f"u{i}"}) as r:
                key = (await r.text()).strip() if r.status == 200 else str(r.status)
                seen[key] = seen.get(key, 0) + 1
    return seen


async def test_deploy_rolls_out_new_containers_and_retires_the_old_ones(docker_engine: Engine,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    engine = docker_engine
    controller, edge = controller_and_edge(engine, tmp_path, rollouts={"shop": SPEC})
    v2, v3 = engine.app_image("shop-app:2", "v2"), engine.app_image("shop-app:3", "v3")
    try:
        p1 = free_port()
        old = engine.web(p1, "v1", {"turnout.service": "shop", "turnout.version": "v1", "turnout.port": str(p1),
                                    "turnout.host": "shop"})

        async def only(expected: set[str]) -> bool:
            return set(await versions_seen(edge.port, 8)) == expected
        await until(lambda: only({"v1"}), 20)
        failures: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            async with aiohttp.ClientSession() as session:
                for i in range(5000):
                    if stop.is_set():
                        return
                    async with session.get(f"http://127.0.0.1:{edge.port}/",
                                           headers={"Host": "shop", "X-User": f"u{i % 40}"}) as r:
                        await r.read()
                        if r.status != 200:
                            failures.append(str(r.status))
                    await asyncio.sleep(0.01)
        loader = asyncio.create_task(load())

        async with aiohttp.ClientSession() as session:
            status, body = await controller.call(session, "POST", "/v1/deploys",
                                                 {"service": "shop", "image": "shop-app:404", "version": "v9"})
            assert status == 422 and "not on the engine" in body["error"] and body["field"] == "image"

            status, body = await controller.call(session, "POST", "/v1/deploys",
                                                 {"service": "shop", "image": v2, "version": "v2", "replicas": 2})
            assert status == 201, body

            async def deploy_phase(*phases: str) -> bool:
                _, now = await controller.call(session, "GET", "/v1/deploys/shop")
                return bool(now["phase"] in phases)
            await until(lambda: deploy_phase("Succeeded", "Aborted", "Failed"), 60)
            _, done = await controller.call(session, "GET", "/v1/deploys/shop")
            assert done["phase"] == "Succeeded", done
            assert done["rollout"]["phase"] == "Succeeded"
            assert await only({"v2"})
            new = engine.client.containers.list(filters={"label": "turnout.deploy=shop-1"})
            assert len(new) == 2 and {c.labels["turnout.version"] for c in new} == {"v2"}
            assert old.id not in {c.id for c in engine.client.containers.list(all=True)}  # retired: removed

            # v3 deployed, then aborted: its containers go, v2's stay and serve.
            status, body = await controller.call(session, "POST", "/v1/deploys",
                                                 {"service": "shop", "image": v3, "version": "v3"})
            assert status == 201, body

            async def rolling() -> bool:
                _, now = await controller.call(session, "GET", "/v1/deploys/shop")
                return bool(now["phase"] == "Releasing")
            await until(rolling, 30)
            status, _ = await controller.call(session, "POST", "/v1/rollouts/shop/abort")
            assert status == 200
            await until(lambda: deploy_phase("Aborted", "Succeeded", "Failed"), 30)
            _, done = await controller.call(session, "GET", "/v1/deploys/shop")
            assert done["phase"] == "Aborted" and "old ones untouched" in done["reason"], done
            assert engine.client.containers.list(all=True, filters={"label": "turnout.deploy=shop-2"}) == []
            assert {c.id for c in new} <= {c.id for c in engine.client.containers.list()}
            assert await only({"v2"})
        stop.set()
        await loader
        assert failures == [], failures[:5]
    finally:
        edge.stop()
        controller.stop()
        engine.cleanup()


async def test_a_controller_killed_mid_deploy_resumes_it_without_starting_containers_twice(
        docker_engine: Engine, tmp_path: Path) -> None:  # noqa: F811
    import os
    import signal

    engine = docker_engine
    port = free_port()
    (tmp_path / "controller.yaml").write_text(yaml.safe_dump({
        "controller": {"listen": f"127.0.0.1:{port}"}, "providers": {"docker": {"endpoint": engine.url}},
        "rollouts": {"shop": {**SPEC, "steps": [{"setWeight": 50}, {"pause": {"duration": "3s"}}]}}}))
    controller = Controller(tmp_path / "controller.yaml")
    slow = engine.app_image("shop-app:slow", "v2", delay=2)  # healthy 2 s after it starts
    try:
        p1 = free_port()
        engine.web(p1, "v1", {"turnout.service": "shop", "turnout.version": "v1", "turnout.port": str(p1),
                              "turnout.host": "shop"})
        async with aiohttp.ClientSession() as session:
            async def found() -> bool:
                _, state = await controller.call(session, "GET", "/v1/state")
                return "shop" in state["services"]
            await until(found, 20)
            status, body = await controller.call(session, "POST", "/v1/deploys",
                                                 {"service": "shop", "image": slow, "version": "v2", "replicas": 3})
            assert status == 201, body
            await asyncio.sleep(1.0)  # creating: containers started, not healthy yet
            for moment in ("Creating", "Releasing"):
                _, now = await controller.call(session, "GET", "/v1/deploys/shop")
                assert moment == "Releasing" or now["phase"] == "Creating", now
                if moment == "Releasing":
                    async def releasing(running: Controller = controller) -> bool:
                        _, current = await running.call(session, "GET", "/v1/deploys/shop")
                        return bool(current["phase"] == "Releasing")
                    await until(releasing, 30)
                os.kill(controller.process.pid, signal.SIGKILL)
                controller.process.wait(10)
                controller.stop()
                controller = Controller(tmp_path / "controller.yaml")
            async def ended() -> bool:
                _, current = await controller.call(session, "GET", "/v1/deploys/shop")
                return bool(current["phase"] in ("Succeeded", "Aborted", "Failed"))
            await until(ended, 60)
            _, done = await controller.call(session, "GET", "/v1/deploys/shop")
            assert done["phase"] == "Succeeded", done
        started = engine.client.containers.list(all=True, filters={"label": "turnout.deploy=shop-1"})
        assert len(started) == 3  # two restarts, never a fourth container
        assert all(c.status == "running" for c in started)
    finally:
        controller.stop()
        engine.cleanup()


async def test_a_rolling_deploy_replaces_containers_one_at_a_time_failing_no_request(
        docker_engine: Engine, tmp_path: Path) -> None:  # noqa: F811
    engine = docker_engine
    controller, edge = controller_and_edge(engine, tmp_path)
    image = engine.app_image("shop-app:1.1", "v1-new", delay=1)
    try:
        olds = []
        for _ in range(3):
            p = free_port()
            olds.append(engine.web(p, "v1-old", {"turnout.service": "shop", "turnout.version": "v1",
                                                 "turnout.port": str(p), "turnout.host": "shop"}))

        async def only(expected: set[str]) -> bool:
            return set(await versions_seen(edge.port, 9)) == expected
        await until(lambda: only({"v1-old"}), 20)
        failures: list[str] = []
        seen: list[str] = []
        stop = asyncio.Event()

        async def load(keep_alive: bool) -> None:
            connector = aiohttp.TCPConnector(force_close=not keep_alive)
            async with aiohttp.ClientSession(connector=connector) as session:
                for i in range(6000):
                    if stop.is_set():
                        return
                    try:
                        async with session.get(f"http://127.0.0.1:{edge.port}/",
                                               headers={"Host": "shop", "X-User": f"u{i % 40}"}) as r:
                            text = (await r.text()).strip()
                            (seen if r.status == 200 else failures).append(text if r.status == 200 else str(r.status))
                    except aiohttp.ClientError as exc:
                        failures.append(repr(exc))
                    await asyncio.sleep(0.01)
        loaders = [asyncio.create_task(load(keep)) for keep in (True, False)]
        async with aiohttp.ClientSession() as session:
            status, body = await controller.call(session, "POST", "/v1/deploys", {
                "service": "shop", "image": image, "version": "v1", "strategy": "rolling"})
            assert status == 201 and body["phase"] == "Rolling" and body["replicas"] == 3, body

            serving: list[int] = []  # sampled: endpoints of shop/v1 taking new requests

            async def done() -> bool:
                _, state = await controller.call(session, "GET", "/v1/state")
                health = state["services"]["shop"]["versions"]["v1"]["health"]
                serving.append(sum(1 for status in health.values() if status != "draining"))
                _, now = await controller.call(session, "GET", "/v1/deploys/shop")
                return bool(now["phase"] in ("Succeeded", "Failed"))
            await until(done, 90)
            assert len(serving) > 20 and min(serving) >= 3, serving  # max unavailable 0: never fewer than 3
            _, final = await controller.call(session, "GET", "/v1/deploys/shop")
            assert final["phase"] == "Succeeded", final
            whys = [h["why"] for h in final["history"]]
            # One at a time: each batch's new container served and was watched before an old one drained.
            order = [next(step for key, step in (("watching", "new"), ("draining", "drain"), ("batch done", "done"))
                          if key in w) for w in whys if any(k in w for k in ("watching", "draining", "batch done"))]
            assert order == ["new", "drain", "done"] * 3, whys
            status, body = await controller.call(session, "POST", "/v1/deploys", {
                "service": "shop", "image": image, "version": "v9", "strategy": "rolling"})
            assert status == 422 and "no running containers of shop/v9" in body["error"]
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*loaders)
        assert await only({"v1-new"})
        assert failures == [], failures[:5]
        assert {"v1-old", "v1-new"} <= set(seen)
        running = {c.id for c in engine.client.containers.list()}
        assert not running & {c.id for c in olds}
    finally:
        edge.stop()
        controller.stop()
        engine.cleanup()


async def test_undo_inside_the_scale_down_delay_routes_back_to_the_old_containers(
        docker_engine: Engine, tmp_path: Path) -> None:  # noqa: F811
    engine = docker_engine
    controller, edge = controller_and_edge(engine, tmp_path, rollouts={"shop": {**SPEC, "scaleDownDelay": "60s"}})
    image = engine.app_image("shop-app:2u", "v2")
    try:
        p1 = free_port()
        old = engine.web(p1, "v1", {"turnout.service": "shop", "turnout.version": "v1", "turnout.port": str(p1),
                                    "turnout.host": "shop"})

        async def only(expected: set[str]) -> bool:
            return set(await versions_seen(edge.port, 8)) == expected
        await until(lambda: only({"v1"}), 20)
        async with aiohttp.ClientSession() as session:
            status, body = await controller.call(session, "POST", "/v1/deploys",
                                                 {"service": "shop", "image": image, "version": "v2"})
            assert status == 201, body

            async def succeeded() -> bool:
                _, now = await controller.call(session, "GET", "/v1/rollouts/shop")
                return bool(now.get("phase") == "Succeeded")
            await until(succeeded, 60)
            assert await only({"v2"})
            status, body = await controller.call(session, "POST", "/v1/rollouts/shop/undo")  # within the 60 s
            assert status == 200 and body["phase"] == "Aborted", body
            assert await only({"v1"})  # at once: the old container was still there, warm

            async def cleaned() -> bool:
                _, now = await controller.call(session, "GET", "/v1/deploys/shop")
                return bool(now["phase"] in ("Aborted", "Failed", "Succeeded"))
            await until(cleaned, 30)
            _, done = await controller.call(session, "GET", "/v1/deploys/shop")
        assert done["phase"] == "Aborted", done
        assert engine.client.containers.list(all=True, filters={"label": "turnout.deploy=shop-1"}) == []
        assert old.id in {c.id for c in engine.client.containers.list()}
    finally:
        edge.stop()
        controller.stop()
        engine.cleanup()


async def test_rolling_deploys_are_gated_rolled_back_and_undone_to_a_revision_failing_no_request(
        docker_engine: Engine, tmp_path: Path) -> None:  # noqa: F811
    """Revision 1 (image a), revision 2 (image b) roll through; revision 3, an image that never answers,
    is stopped in its first batch and rolled back; undo to revision 1 brings image a back. Zero failed
    requests under load throughout."""
    engine = docker_engine
    controller, edge = controller_and_edge(engine, tmp_path)
    image_a = engine.app_image("shop-app:a", "v1-a")
    image_b = engine.app_image("shop-app:b", "v1-b")
    broken = engine.app_image("shop-app:broken", "never", delay=3600)  # runs, never listens
    try:
        for _ in range(2):
            p = free_port()
            engine.web(p, "v1-old", {"turnout.service": "shop", "turnout.version": "v1", "turnout.port": str(p),
                                     "turnout.host": "shop"})

        async def only(expected: set[str]) -> bool:
            return set(await versions_seen(edge.port, 8)) == expected
        await until(lambda: only({"v1-old"}), 20)
        failures: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            async with aiohttp.ClientSession() as session:
                for i in range(20000):
                    if stop.is_set():
                        return
                    try:
                        async with session.get(f"http://127.0.0.1:{edge.port}/",
                                               headers={"Host": "shop", "X-User": f"u{i % 40}"}) as r:
                            await r.read()
                            if r.status != 200:
                                failures.append(str(r.status))
                    except aiohttp.ClientError as exc:
                        failures.append(repr(exc))
                    await asyncio.sleep(0.01)
        loader = asyncio.create_task(load())
        gate = {"monitor": 1, "progressDeadline": 8}
        async with aiohttp.ClientSession() as session:
            async def deployed(body: dict[str, Any], path: str = "/v1/deploys") -> dict[str, Any]:
                status, started = await controller.call(session, "POST", path, body)
                assert status == 201, started

                async def ended() -> bool:
                    _, now = await controller.call(session, "GET", "/v1/deploys/shop")
                    return bool(now["phase"] in ("Succeeded", "Aborted", "Failed"))
                await until(ended, 90)
                _, final = await controller.call(session, "GET", "/v1/deploys/shop")
                return dict(final)
            rolling = {"service": "shop", "version": "v1", "strategy": "rolling", "rolling": gate}
            assert (await deployed({**rolling, "image": image_a}))["phase"] == "Succeeded"
            assert await only({"v1-a"})
            assert (await deployed({**rolling, "image": image_b}))["phase"] == "Succeeded"
            assert await only({"v1-b"})
            bad = await deployed({**rolling, "image": broken})
            assert bad["phase"] == "Aborted" and "rolled back" in bad["reason"], bad
            assert await only({"v1-b"})
            undone = await deployed({"toRevision": 1}, "/v1/deploys/shop/undo")
            assert undone["phase"] == "Succeeded" and undone["image"] == image_a and undone["revision"] == 4, undone
            assert await only({"v1-a"})
            status, history = await controller.call(session, "GET", "/v1/deploys/shop/history")
            assert status == 200
            assert [(r["revision"], r["image"], r["phase"]) for r in history["revisions"]] == [
                (1, image_a, "Succeeded"), (2, image_b, "Succeeded"), (3, broken, "Aborted"), (4, image_a, "Succeeded")]
        stop.set()
        await loader
        assert failures == [], failures[:5]
        assert all(c.attrs["Config"]["Image"] == image_a for c in engine.client.containers.list(
            filters={"label": "turnout.service=shop"}))
    finally:
        edge.stop()
        controller.stop()
        engine.cleanup()
