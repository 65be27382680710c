"""Turnout's image, built from the Dockerfile on a real engine and run as a user runs it: the proxy and
the controller from one image, not as root, healthy by its HEALTHCHECK, its state in its volume. The
base is a Debian rootfs with Python (debootstrap) imported offline: nothing is pulled."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import yaml

from ..dockerengine import Engine, docker_engine, turnout_image  # noqa: F401 - the fixtures
from ..integration.test_managed import free_port, until


async def _get(url: str, **headers: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
            return response.status, await response.text()
    except aiohttp.ClientError:
        return 0, ""


def _health(container: object) -> str | None:
    container.reload()  # type: ignore[attr-defined]
    return ((container.attrs.get("State") or {}).get("Health") or {}).get("Status")  # type: ignore[attr-defined]


async def test_the_image_runs_the_proxy_and_the_controller(docker_engine: Engine, turnout_image: str,  # noqa: F811
                                                           tmp_path: Path) -> None:
    engine = docker_engine
    app_port, listen, admin, controller_port = free_port(), free_port(), free_port(), free_port()
    engine.web(app_port, "hello-from-app", {})
    config = tmp_path / "turnout.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{listen}", "admin": {"listen": f"127.0.0.1:{admin}"},
        "services": {"shop": {"versions": {"v1": [f"127.0.0.1:{app_port}"]}, "version": "v1"}}}))
    config.chmod(0o644)
    proxy = engine.client.containers.run(
        turnout_image, detach=True, init=True, network_mode="host", labels={"turnout.test": "1"},
        environment={"TURNOUT_HEALTH_URL": f"http://127.0.0.1:{admin}/ready"},
        volumes={str(config): {"bind": "/var/lib/turnout/turnout.yaml", "mode": "ro"}})
    (tmp_path / "controller.yaml").write_text(yaml.safe_dump({
        "controller": {"listen": f"127.0.0.1:{controller_port}", "token_env": "TURNOUT_CONTROLLER_TOKEN"},
        "services": {"shop": {"versions": {"v1": [f"127.0.0.1:{app_port}"]}, "version": "v1"}}}))
    (tmp_path / "controller.yaml").chmod(0o644)
    controller = engine.client.containers.run(
        turnout_image, ["controller", "--config", "/var/lib/turnout/controller.yaml"], detach=True, init=True,
        network_mode="host", labels={"turnout.test": "1"},
        environment={"TURNOUT_CONTROLLER_TOKEN": "s3cret", "TURNOUT_HEALTH_URL": f"http://127.0.0.1:{controller_port}/live"},
        volumes={str(tmp_path / "controller.yaml"): {"bind": "/var/lib/turnout/controller.yaml", "mode": "ro"}})
    try:
        async def answered() -> bool:
            return (await _get(f"http://127.0.0.1:{listen}/"))[1].strip() == "hello-from-app"
        await until(answered, 30)
        async def controlled() -> bool:
            status, body = await _get(f"http://127.0.0.1:{controller_port}/v1/state", Authorization="Bearer s3cret")
            return status == 200 and '"services": {"shop"' in body
        await until(controlled, 30)
        assert (await _get(f"http://127.0.0.1:{controller_port}/v1/state"))[0] == 401  # its token is required

        deadline = time.monotonic() + 40
        while {_health(proxy), _health(controller)} != {"healthy"}:  # by the image's own HEALTHCHECK
            assert time.monotonic() < deadline, (_health(proxy), _health(controller), proxy.logs()[-500:])
            await asyncio.sleep(0.5)
        assert proxy.attrs["Config"]["User"] == "turnout"
        assert b"hot path: compiled (mypyc)" in proxy.logs()  # the wheel built for the image is the compiled one
        uid = proxy.exec_run(["python3", "-c", "import os; print(os.getuid())"]).output.decode().strip()
        assert uid != "0"
        listing = proxy.exec_run(["python3", "-c", "import os; print(sorted(os.listdir('/var/lib/turnout')))"])
        assert "admin.token" in listing.output.decode() and "turnout.yaml.state.json" in listing.output.decode()
        mounts = {m["Destination"]: m["Type"] for m in proxy.attrs["Mounts"]}
        assert mounts.get("/var/lib/turnout") == "volume"  # the state directory is a volume
        proxy.stop(timeout=10)
        proxy.reload()
        assert proxy.attrs["State"]["ExitCode"] == 0  # SIGTERM drains and exits cleanly
    finally:
        for container in (proxy, controller):
            container.remove(force=True, v=True)
