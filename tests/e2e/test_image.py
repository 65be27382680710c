"""Turnout's image, built by ``make image`` on a real engine and run as a user runs it: the proxy and
the controller from one image, not as root, healthy by its HEALTHCHECK at the addresses their configs
give them, ``turnout status`` working inside each, no anonymous volume left behind; and an app image
built ``FROM`` it is not made unhealthy by the check it inherits. The base is a Debian rootfs with
Python (debootstrap) imported offline: nothing is pulled."""

from __future__ import annotations

import io
from pathlib import Path

import aiohttp
import yaml

from ..dockerengine import Engine, health, last_check, wait_healthy
from ..integration.test_managed import free_port, until


async def _get(url: str, **headers: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
            return response.status, await response.text()
    except aiohttp.ClientError:
        return 0, ""


async def test_the_image_runs_the_proxy_and_the_controller(docker_engine: Engine, turnout_image: str,
                                                           tmp_path: Path) -> None:
    engine = docker_engine
    volumes_before = {v.name for v in engine.client.volumes.list()}
    app_port, listen, admin, controller_port = free_port(), free_port(), free_port(), free_port()
    engine.web(app_port, "hello-from-app", {})
    config = tmp_path / "turnout.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{listen}", "admin": {"listen": f"127.0.0.1:{admin}"},
        "services": {"shop": {"versions": {"v1": [f"127.0.0.1:{app_port}"]}, "version": "v1"}}}))
    config.chmod(0o644)
    # No health URL given: the image's check asks the addresses these configs give the processes.
    proxy = engine.client.containers.run(
        turnout_image, detach=True, init=True, network_mode="host", labels={"turnout.test": "1"},
        volumes={str(config): {"bind": "/var/lib/turnout/turnout.yaml", "mode": "ro"}})
    (tmp_path / "controller.yaml").write_text(yaml.safe_dump({
        "controller": {"listen": f"127.0.0.1:{controller_port}", "token_env": "TURNOUT_CONTROLLER_TOKEN"},
        "services": {"shop": {"versions": {"v1": [f"127.0.0.1:{app_port}"]}, "version": "v1"}}}))
    (tmp_path / "controller.yaml").chmod(0o644)
    controller = engine.client.containers.run(
        turnout_image, ["controller", "--config", "/var/lib/turnout/controller.yaml"], detach=True, init=True,
        network_mode="host", labels={"turnout.test": "1"}, environment={"TURNOUT_CONTROLLER_TOKEN": "s3cret"},
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

        await wait_healthy([proxy, controller])
        # The check asked each process's own address (not a default another process might answer on).
        assert last_check(proxy).startswith(f"GET http://127.0.0.1:{admin}/ready: 200"), health(proxy)
        assert last_check(controller).startswith(f"GET http://127.0.0.1:{controller_port}/ready: 200")
        # The same command fails when what it asks does not answer.
        failed = proxy.exec_run(["turnout-health"], environment={"TURNOUT_HEALTH_URL": f"http://127.0.0.1:{free_port()}/"})
        assert failed.exit_code == 1 and b"Connection refused" in failed.output, failed.output

        # `docker exec … turnout status` finds the process's API and token: the proxy's admin API…
        status = proxy.exec_run(["turnout", "status"])
        assert status.exit_code == 0 and b"service shop" in status.output, status.output
        # …and in the controller's container, the controller.
        status = controller.exec_run(["turnout", "proxies"])
        assert status.exit_code == 0, status.output

        assert proxy.attrs["Config"]["User"] == "turnout"
        assert b"hot path: compiled (mypyc)" in proxy.logs()  # the wheel built for the image is the compiled one
        uid = proxy.exec_run(["python3", "-c", "import os; print(os.getuid())"]).output.decode().strip()
        assert uid != "0"
        listing = proxy.exec_run(["python3", "-c", "import os; print(sorted(os.listdir('/var/lib/turnout')))"])
        assert "admin.token" in listing.output.decode() and "turnout.yaml.state.json" in listing.output.decode()
        token = proxy.exec_run(["cat", "/var/lib/turnout/admin.token"]).output
        # No volume: the state directory is the container's own, kept across a restart.
        assert [m["Type"] for m in proxy.attrs["Mounts"]] == ["bind"]
        proxy.restart(timeout=10)
        await until(answered, 30)
        assert proxy.exec_run(["cat", "/var/lib/turnout/admin.token"]).output == token
        proxy.stop(timeout=10)
        proxy.reload()
        assert proxy.attrs["State"]["ExitCode"] == 0  # SIGTERM drains and exits cleanly
    finally:
        for container in (proxy, controller):
            container.remove(force=True)
    assert {v.name for v in engine.client.volumes.list()} == volumes_before  # no anonymous volume left


async def test_an_app_image_built_from_it_is_not_made_unhealthy(docker_engine: Engine,
                                                              turnout_image: str) -> None:
    """An app image ``FROM turnout`` with its own entrypoint inherits the HEALTHCHECK: with no Turnout
    process in the container there is nothing of Turnout's to check, so it does not fail."""
    engine = docker_engine
    port = free_port()
    dockerfile = (f"FROM {turnout_image}\n"
                  f'ENTRYPOINT ["python3", "-m", "proxy.demo", "v7=127.0.0.1:{port}"]\n')
    image, _ = engine.client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag="turnout-test/app:1",
                                          pull=False, rm=True)
    app = engine.client.containers.run(image.id, detach=True, init=True, network_mode="host",
                                       labels={"turnout.test": "1"})
    try:
        async def answered() -> bool:
            return (await _get(f"http://127.0.0.1:{port}/"))[1].startswith("hello from v7")
        await until(answered, 30)
        await wait_healthy([app])
        assert last_check(app) == "no Turnout process here: nothing to check\n"
    finally:
        app.remove(force=True)
