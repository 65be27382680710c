"""The controller's costs, measured in one run:

    .venv/bin/python benchmarks/fleet.py [--rounds 3] [--duration 6] [--changes 10]

1. Convergence: the time from a weight change sent to the controller to its answer, which comes only
   once every live proxy serves the new generation, for 1, 3 and 10 managed proxy processes.
2. Data-path cost of being managed: CPU-µs per proxied request of a managed proxy against a standalone
   one with the same routing, in alternating rounds (wrk and nginx upstreams as in ``run.py``; the
   controller is a separate process, not counted: it is not in the data path). The managed proxy polls
   and reports its counters; the ratio says what that costs the hot path.

Medians with ranges; ratios are paired within each round.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from run import (
    LOAD_CORE,
    PROXY_CORE,
    PROXY_PORT,
    ROOT,
    UPSTREAM_PORTS,
    WRK_SCRIPT,
    cpu_seconds,
    ensure_tools,
    nginx_upstreams,
    pinned,
    process_tree,
    run_wrk,
    wait_port,
)

ROUTING = {"services": {"bench": {
    "versions": {"v1": [f"127.0.0.1:{UPSTREAM_PORTS['v1']}"], "v2": [f"127.0.0.1:{UPSTREAM_PORTS['v2']}"]},
    "rules": [{"name": "testers", "match": {"headers": {"x-canary": "always"}}, "version": "v2"},
              {"name": "default", "split": {"v1": 90, "v2": 10}, "sticky": {"header": "x-user-id"}}]}}}
ENV = {**os.environ, "TURNOUT_LOG_LEVEL": "WARNING"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Controller:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        path = work / "controller.yaml"
        path.write_text(json.dumps({"controller": {"listen": f"127.0.0.1:{self.port}"}, **ROUTING}))
        for stale in work.glob("controller.state.json*"):
            stale.unlink()
        # On the load core, with wrk and the upstreams: it must not share the proxy's core.
        self.process = pinned(LOAD_CORE, [sys.executable, "-m", "controller", "--config", str(path)], cwd=ROOT,
                              env=ENV, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.token = (work / "controller.token").read_text().strip()
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(self.url + path, method=method, data=json.dumps(body).encode() if body
                                         else None, headers={"Authorization": f"Bearer {self.token}",
                                                             "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(20)


def managed(work: Path, controller: Controller, name: str, listen: str, core: str | None = None
            ) -> subprocess.Popen[bytes]:
    folder = work / name
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("*.snapshot.json"):
        stale.unlink()
    path = folder / "turnout.yaml"
    path.write_text(json.dumps({"listen": listen, "controller": {
        "url": controller.url, "token_file": str(work / "controller.token"), "id": name}}))
    args = [sys.executable, "-m", "proxy", "--config", str(path)]
    if core is not None:
        return pinned(core, args, cwd=ROOT, env=ENV, stderr=subprocess.DEVNULL)
    return subprocess.Popen(args, cwd=ROOT, env=ENV, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def convergence(work: Path, count: int, changes: int) -> list[float]:
    controller = Controller(work)
    proxies = [managed(work, controller, f"edge-{i}", "127.0.0.1:0") for i in range(count)]
    try:
        deadline = time.monotonic() + 30
        while len([p for p in controller.call("GET", "/v1/proxies")["proxies"] if p["live"]]) < count:
            if time.monotonic() > deadline:
                raise RuntimeError("proxies did not all follow the controller")
            time.sleep(0.1)
        took = []
        for i in range(changes):
            share = 10 + 5 * (i % 8)
            started = time.perf_counter()
            answer = controller.call("PUT", "/v1/services/bench/rules/default/weights",
                                     {"weights": {"v1": 100 - share, "v2": share}})
            took.append((time.perf_counter() - started) * 1000)
            if not answer["converged"] or len(answer["proxies"]) != count:
                raise RuntimeError(f"not converged: {answer['proxies']}")
        return took
    finally:
        for process in proxies:
            stop(process)
        controller.stop()


def cpu_per_request(work: Path, mode: str, duration: float, connections: int, script: Path) -> float:
    controller = None
    if mode == "managed":
        controller = Controller(work)
        process = managed(work, controller, "bench", f"127.0.0.1:{PROXY_PORT}", PROXY_CORE)
    else:
        path = work / "standalone.yaml"
        path.write_text(json.dumps({"listen": f"127.0.0.1:{PROXY_PORT}", **ROUTING}))
        process = pinned(PROXY_CORE, [sys.executable, "-m", "proxy", "--config", str(path)], cwd=ROOT, env=ENV,
                         stderr=subprocess.DEVNULL)
    try:
        wait_port(PROXY_PORT)
        deadline = time.monotonic() + 20
        while True:  # a managed proxy serves 404 until its first snapshot: wait for routing
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PROXY_PORT}/100B", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        url = f"http://127.0.0.1:{PROXY_PORT}/100B"
        subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", "-d1s", "-s", str(script),
                        url], capture_output=True, check=True)  # warm-up
        pids = process_tree(process.pid)
        before = cpu_seconds(pids)
        result = run_wrk(url, duration, connections, script)
        if result["errors"]:
            raise RuntimeError(f"{mode}: {result['errors']} errors")
        return float((cpu_seconds(pids) - before) * 1e6 / max(1, result["requests"]))
    finally:
        stop(process)
        if controller is not None:
            controller.stop()
        time.sleep(0.3)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()
    ensure_tools()
    with tempfile.TemporaryDirectory() as name:
        work = Path(name)
        work.chmod(0o755)  # nginx workers run as an unprivileged user and must read the files
        print("| proxies | change answered, all serving it (ms) |\n|---|---|")
        for count in (1, 3, 10):
            print(f"| {count} | {spread(convergence(work, count, args.changes))} |", flush=True)
        script = work / "users.lua"
        script.write_text(WRK_SCRIPT)
        upstreams = nginx_upstreams(work)
        try:
            for port in UPSTREAM_PORTS.values():
                wait_port(port)
            standalone, managed_cpu, ratios = [], [], []
            for _ in range(args.rounds):
                a = cpu_per_request(work, "standalone", args.duration, args.connections, script)
                b = cpu_per_request(work, "managed", args.duration, args.connections, script)
                standalone.append(a)
                managed_cpu.append(b)
                ratios.append(b / a)
        finally:
            upstreams.send_signal(signal.SIGQUIT)
            upstreams.wait(10)
        print(f"\nCPU-µs per request (100 B): standalone {spread(standalone)}, managed {spread(managed_cpu)}, "
              f"managed/standalone {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) "
              f"over {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
