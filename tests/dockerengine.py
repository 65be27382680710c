"""A real Docker engine for the tests, started and stopped by them (Debian's docker.io, ``make test``
installs it): ``dockerd`` in a temporary directory with its own socket, no iptables, and one tiny image
made offline from Debian's static busybox (nothing is ever pulled). Containers use host networking and
listen on 127.0.0.1 ports the tests choose."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

IMAGE = "turnout-test/busybox:1"
TEST_LABEL = "turnout.test"


def controller_and_edge(engine: Engine, tmp_path: Path, **sections: Any) -> tuple[Any, Any]:
    """A controller discovering ``engine``'s containers (``sections``: more of its config) and one
    managed proxy following it, both as processes."""
    import yaml

    from .conftest import ProxyProcess
    from .integration.test_controller import Controller
    from .integration.test_managed import free_port, managed_config

    port = free_port()
    (tmp_path / "controller.yaml").write_text(yaml.safe_dump({
        "controller": {"listen": f"127.0.0.1:{port}"}, "providers": {"docker": {"endpoint": engine.url}},
        **sections}))
    controller = Controller(tmp_path / "controller.yaml")
    (tmp_path / "edge").mkdir()
    edge_config = tmp_path / "edge" / "turnout.yaml"
    edge_config.write_text(managed_config(f"http://127.0.0.1:{port}", tmp_path / "controller.token", "edge-1"))
    return controller, ProxyProcess(edge_config)


class Engine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"unix://{root}/docker.sock"
        # No version probe before the engine runs; a long timeout: an image build on a busy machine is slow.
        self.client = docker.DockerClient(base_url=self.url, timeout=600, version="1.41")
        self.rootfs = root / "rootfs.tar"

    def web(self, port: int, text: str, labels: dict[str, str], **options: Any) -> Any:
        """A container answering ``text`` on 127.0.0.1:port (busybox httpd), with ``labels``."""
        script = (f"mkdir -p /tmp/www && echo {text} > /tmp/www/index.html && "
                  f"exec httpd -f -p 127.0.0.1:{port} -h /tmp/www")
        return self.client.containers.run(IMAGE, ["/bin/sh", "-c", script], detach=True, init=True,
                                          network_mode="host", labels={TEST_LABEL: "1", **labels}, **options)

    def app_image(self, name: str, text: str, delay: float = 0) -> str:
        """An image whose container answers ``text`` on 127.0.0.1:$PORT (what a deploy gives it),
        ``delay`` seconds after it starts."""
        script = (f"sleep {delay:g}; mkdir -p /tmp/www && echo {text} > /tmp/www/index.html && "
                  "exec httpd -f -p 127.0.0.1:$PORT -h /tmp/www")
        self.client.api.import_image_from_data(self.rootfs.read_bytes(), repository=name.split(":")[0],
                                               tag=name.split(":")[1], changes=[
                                                   f'CMD ["/bin/sh", "-c", "{script}"]', "ENV PORT=8080"])
        return name

    def cleanup(self) -> None:
        for label in (TEST_LABEL, "turnout.deploy"):
            for container in self.client.containers.list(all=True, filters={"label": label}):
                container.remove(force=True)


def health(container: Any) -> dict[str, Any]:
    """The container's Docker health: ``Status`` and ``Log`` (each check's ``Output``)."""
    container.reload()
    return dict((container.attrs.get("State") or {}).get("Health") or {})


async def wait_healthy(containers: list[Any], seconds: float = 40) -> None:
    """Wait until Docker says every one of ``containers`` is healthy, by its image's HEALTHCHECK."""
    deadline = time.monotonic() + seconds
    while {health(c).get("Status") for c in containers} != {"healthy"}:
        assert time.monotonic() < deadline, [(c.name, health(c), c.logs()[-500:]) for c in containers]
        await asyncio.sleep(0.5)


def last_check(container: Any) -> str:
    """What the last health check printed."""
    return str(health(container)["Log"][-1]["Output"])


def _image_tar(folder: Path) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    rootfs = folder / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "tmp").mkdir()
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for tool in ("sh", "httpd", "echo", "mkdir", "sleep", "wget"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    archive = folder / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    return archive


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.fail("Debian's docker.io is needed for the Docker tests (make test installs it)")
    root = Path(tempfile.mkdtemp(prefix="tdk", dir="/tmp"))  # short: a unix socket path has 108 bytes
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [dockerd, "-H", f"unix://{root}/docker.sock", "--data-root", str(root / "data"), "--exec-root",
         str(root / "exec"), "--pidfile", str(root / "dockerd.pid"), "--storage-driver", "overlay2",
         "--exec-opt", "native.cgroupdriver=cgroupfs", "--iptables=false", "--ip6tables=false",
         "--ip-forward=false"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        engine = Engine(root)
        deadline = time.monotonic() + 30
        while True:
            try:
                engine.client.version()
                break
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "dockerd.log").read_text()) from None
                time.sleep(0.1)
        engine.rootfs = _image_tar(root)
        engine.client.api.import_image_from_data(engine.rootfs.read_bytes(), repository=IMAGE.split(":")[0],
                                                 tag=IMAGE.split(":")[1])
        yield engine
    finally:
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            Engine(root).cleanup()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _unmount_under(root: Path) -> None:
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


ROOT = Path(__file__).resolve().parents[1]
TURNOUT_IMAGE = "turnout:test"


@pytest.fixture(scope="session")
def turnout_image(docker_engine: Engine) -> Iterator[str]:
    """Turnout's image, built on the test's engine by the documented offline command, ``make image``: a
    Debian base with Python made by debootstrap and imported (kept in build/image/ for the next run),
    the wheels built by .venv's Python, ``docker build`` installing them with no index."""
    if shutil.which("debootstrap") is None:
        pytest.fail("Debian's debootstrap is needed to make the image's base offline (make test installs it)")
    built = subprocess.run(["make", "-C", str(ROOT), "image", f"IMAGE={TURNOUT_IMAGE}"], capture_output=True,
                           text=True, timeout=900, env={**os.environ, "DOCKER_HOST": docker_engine.url})
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    yield TURNOUT_IMAGE
