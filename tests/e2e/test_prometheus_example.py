"""``examples/prometheus/prometheus.yml``, the scrape config of docs/admin-api.md, run by Debian's
Prometheus against a real proxy and a real controller: both token-protected ``/metrics`` are scraped
(``up`` is 1, Turnout's own series are stored) with the tokens read from ``credentials_file``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from ..conftest import ProxyProcess
from ..integration.test_controller import Controller, controller_config
from ..integration.test_managed import free_port, until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prometheus" / "prometheus.yml"


async def _query(session: aiohttp.ClientSession, base: str, query: str) -> dict[str, str]:
    """{job: value} of an instant query's vector."""
    try:
        async with session.get(f"{base}/api/v1/query", params={"query": query}) as response:
            answer: Any = await response.json()
    except aiohttp.ClientError:
        return {}
    return {r["metric"].get("job", ""): r["value"][1] for r in answer.get("data", {}).get("result", [])}


async def test_the_prometheus_example_scrapes_the_proxy_and_the_controller(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is needed (make test installs it: apt-get install prometheus)")
    (tmp_path / "controller.yaml").write_text(yaml.safe_dump(controller_config()))
    controller = Controller(tmp_path / "controller.yaml")
    (tmp_path / "proxy").mkdir()
    (tmp_path / "proxy" / "turnout.yaml").write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
        "services": {"shop": {"versions": {"v1": ["127.0.0.1:9"]}, "version": "v1"}}}))
    proxy = ProxyProcess(tmp_path / "proxy" / "turnout.yaml")
    prometheus = None
    try:
        admin = proxy.admin_url().removeprefix("http://")
        # The example as shipped, with this run's addresses and token files (each with a newline).
        config = yaml.safe_load(EXAMPLE.read_text())
        config["global"]["scrape_interval"] = "1s"
        places = {"turnout-proxy": (admin, tmp_path / "proxy" / "admin.token"),
                  "turnout-controller": (controller.base.removeprefix("http://"), tmp_path / "controller.token")}
        assert {job["job_name"] for job in config["scrape_configs"]} == set(places)
        for job in config["scrape_configs"]:
            target, token = places[job["job_name"]]
            copy = tmp_path / f"{job['job_name']}.token"
            copy.write_text(token.read_text().strip() + "\n")
            job["authorization"]["credentials_file"] = str(copy)
            job["static_configs"] = [{"targets": [target]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        prometheus = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async def scraped() -> bool:
                return await _query(session, base, "up") == {"turnout-proxy": "1", "turnout-controller": "1"}
            await until(scraped, 30)
            assert await _query(session, base, "turnout_generation") == {"turnout-proxy": "1"}
            assert set(await _query(session, base, "turnout_controller_generation")) == {"turnout-controller"}
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(10)
        proxy.stop()
        controller.stop()
