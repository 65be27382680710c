"""Turnout against nginx and HAProxy, in one run, on this machine.

    .venv/bin/python benchmarks/run.py [--rounds 3] [--duration 8] [--connections 64]

Installs nginx, HAProxy and wrk from Debian if they are missing (without starting their services).
Two upstreams (nginx, one worker, serving 100-byte, 64 KiB and 1 MiB files, tagging responses with their
version) sit on core 1 with wrk. Each proxy runs alone on core 0 with one worker and splits 90/10 by
a sticky hash of the X-User-Id header, which wrk sets to a random user per request:
- nginx: `split_clients` on the header, upstream keep-alive pools;
- HAProxy: `balance hdr(x-user-id)` with consistent hashing and weights 90/10, `http-reuse always`;
- Turnout: a header rule in front of a sticky split (the rule never matches: it costs a miss), once as
  installed (the hot path compiled by mypyc) and once from a copy of its sources (pure Python).
Rounds interleave the proxies so drift on the machine hits them alike. For each run we report req/s,
p50/p99 latency from wrk, and CPU-µs per proxied request from /proc (user+system time of the proxy's
processes divided by requests completed), then medians, min-max and ratios to nginx.
Results go to benchmarks/results/<timestamp>.json and a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROXY_CORE, LOAD_CORE = "0", "1"
UPSTREAM_PORTS = {"v1": 19101, "v2": 19102}
PROXY_PORT = 19100
TLS_PORT = 19143  # the same proxy, terminating TLS (keep-alive clients, so handshakes are amortised)
SIZES = {"100B": 100, "64KiB": 65536, "1MiB": 1 << 20}
# What wrk fetches in each case: (file, TLS?)
CASES = {"100B": ("100B", False), "64KiB": ("64KiB", False), "1MiB": ("1MiB", False),
         "HTTPS 100B": ("100B", True)}
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = """
math.randomseed(os.time())
request = function()
  return wrk.format(nil, nil, {["X-User-Id"] = "user-" .. math.random(1, 1000000)})
end
"""


def ensure_tools() -> None:
    missing = [name for name in ("nginx", "haproxy", "wrk") if shutil.which(name) is None]
    if not missing:
        return
    print(f"installing {' '.join(missing)} from Debian", file=sys.stderr)
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:  # keep the packages' init scripts from starting daemons we did not ask for
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    finally:
        if created:
            policy.unlink()


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def pinned(core: str, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", core, *args], **kwargs)


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / CLK_TCK


# ----------------------------------------------------------------------------------------------- servers


def edge_certificate(work: Path) -> None:
    """A certificate for the HTTPS case (wrk does not verify it): edge.pem, edge.key, and both in one
    file for HAProxy."""
    import trustme  # the test extra that `make` installs; only this case needs it

    leaf = trustme.CA().issue_cert("bench.test")
    (work / "edge.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    (work / "edge.key").write_bytes(leaf.private_key_pem.bytes())
    (work / "edge.combined.pem").write_bytes((work / "edge.pem").read_bytes() + (work / "edge.key").read_bytes())


def nginx_upstreams(work: Path) -> subprocess.Popen[bytes]:
    for version in UPSTREAM_PORTS:
        root = work / f"www-{version}"
        root.mkdir()
        for name, size in SIZES.items():
            (root / name).write_bytes((version.encode() * size)[:size])
    servers = "".join(
        f"server {{ listen 127.0.0.1:{port} backlog=4096; root {work}/www-{version}; "
        f"keepalive_requests 1000000; location / {{ add_header X-Version {version}; }} }}\n"
        for version, port in UPSTREAM_PORTS.items()
    )
    conf = work / "upstreams.conf"
    conf.write_text(_nginx_main(work, "up") + f"http {{ access_log off; {servers} }}\n")
    process = pinned(LOAD_CORE, ["nginx", "-c", str(conf), "-g", "daemon off;"])
    for port in UPSTREAM_PORTS.values():
        wait_port(port)
    return process


def _nginx_main(work: Path, tag: str) -> str:
    return (
        f"worker_processes 1; pid {work}/{tag}.pid; error_log {work}/{tag}.err warn;\n"
        f"events {{ worker_connections 4096; }}\n"
    )


def nginx_proxy(work: Path) -> subprocess.Popen[bytes]:
    upstreams = "".join(
        f"upstream {v} {{ server 127.0.0.1:{p}; keepalive 128; }}\n" for v, p in UPSTREAM_PORTS.items()
    )
    conf = work / "proxy-nginx.conf"
    conf.write_text(_nginx_main(work, "proxy") + (
        "http { access_log off;\n" + upstreams +
        "split_clients \"${http_x_user_id}\" $version { 90% v1; * v2; }\n"
        f"server {{ listen 127.0.0.1:{PROXY_PORT} backlog=4096;\n"
        f"  listen 127.0.0.1:{TLS_PORT} ssl backlog=4096; keepalive_requests 1000000;\n"
        f"  ssl_certificate {work}/edge.pem; ssl_certificate_key {work}/edge.key;\n"
        "  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;\n"
        "  location / { proxy_pass http://$version; proxy_http_version 1.1;\n"
        "    proxy_set_header Connection \"\"; proxy_buffering on;\n"
        # Big enough that a 64 KiB response never spills to a temp file (that would be unfair to nginx).
        # 1 MiB streams through those buffers (no temp file either).
        "    proxy_buffer_size 16k; proxy_buffers 8 16k; proxy_max_temp_file_size 0; } } }\n"
    ))
    return pinned(PROXY_CORE, ["nginx", "-c", str(conf), "-g", "daemon off;"])


def haproxy_proxy(work: Path) -> subprocess.Popen[bytes]:
    conf = work / "haproxy.cfg"
    conf.write_text(
        "global\n  nbthread 1\n  maxconn 4096\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
        "  http-reuse always\n"
        f"frontend fe\n  bind 127.0.0.1:{PROXY_PORT}\n"
        f"  bind 127.0.0.1:{TLS_PORT} ssl crt {work}/edge.combined.pem alpn http/1.1\n  default_backend be\n"
        "backend be\n  balance hdr(x-user-id)\n  hash-type consistent\n"
        f"  server v1 127.0.0.1:{UPSTREAM_PORTS['v1']} weight 90\n"
        f"  server v2 127.0.0.1:{UPSTREAM_PORTS['v2']} weight 10\n"
    )
    return pinned(PROXY_CORE, ["haproxy", "-f", str(conf)])


def pure_sources(work: Path) -> Path:
    """A copy of the package without its compiled extensions: run from there, Python imports the sources
    (checked before measuring), so both builds are measured in the same rounds."""
    copy = work / "pure"
    if not copy.exists():
        shutil.copytree(ROOT / "proxy", copy / "proxy", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return copy


def turnout_build(cwd: Path, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", "from proxy import build; print(build.current().kind)"],
                          cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def turnout_proxy(work: Path, flags: int = 0, pure: bool = False, tree: Path = ROOT) -> subprocess.Popen[bytes]:
    conf = work / f"turnout-{flags}.yaml"
    inject = ""
    if flags:  # N flags, each with a targeting rule and a 10 % rollout, injected into every request
        keys = ", ".join(f"flag{i}" for i in range(flags))
        inject = f"    inject_flags: {{flags: [{keys}]}}\nflags:\n" + "".join(
            f"  flag{i}: {{variants: {{'yes': true, 'no': false}}, default: 'no', "
            f"rules: [{{match: {{context: {{plan: pro}}}}, variant: 'yes'}}], rollout: {{'yes': 10, 'no': 90}}}}\n"
            for i in range(flags))
    conf.write_text(
        "listeners:\n"
        f"  - {{name: http, listen: 127.0.0.1:{PROXY_PORT}}}\n"
        f"  - {{name: https, listen: 127.0.0.1:{TLS_PORT}, tls: {{certificates: "
        f"[{{cert: {work}/edge.pem, key: {work}/edge.key}}]}}}}\n"
        "services:\n  bench:\n    versions:\n"
        f"      v1: [127.0.0.1:{UPSTREAM_PORTS['v1']}]\n      v2: [127.0.0.1:{UPSTREAM_PORTS['v2']}]\n"
        "    rules:\n"
        "      - {name: testers, match: {headers: {x-canary: always}}, version: v2}\n"
        "      - {name: default, split: {v1: 90, v2: 10}, sticky: {header: x-user-id}}\n"
        + inject
    )
    env = {**os.environ, "TURNOUT_LOG_LEVEL": "WARNING"}
    cwd = tree
    if tree != ROOT:  # another source tree, built in place (--against)
        env["PYTHONPATH"] = str(tree)
    if pure:
        cwd = pure_sources(work)
        env["PYTHONPATH"] = str(cwd)
    want = "pure Python" if pure else "compiled (mypyc)"
    if (got := turnout_build(cwd, env)) != want:
        raise RuntimeError(f"turnout{'-pure' if pure else ''} would serve with the {got} build, not {want}")
    return pinned(PROXY_CORE, [sys.executable, "-m", "proxy", "--config", str(conf)], cwd=cwd, env=env,
                  stderr=subprocess.DEVNULL)


PROXIES: dict[str, Callable[[Path], subprocess.Popen[bytes]]] = {
    "nginx": nginx_proxy, "haproxy": haproxy_proxy, "turnout": turnout_proxy,
    "turnout-pure": lambda work: turnout_proxy(work, pure=True),
}


# ----------------------------------------------------------------------------------------------- measuring


def split_share(samples: int = 400) -> float:
    """The share of v2 over random users: checks that each proxy really splits 90/10."""
    seen: Counter[str] = Counter()
    for i in range(samples):
        request = urllib.request.Request(f"http://127.0.0.1:{PROXY_PORT}/100B",
                                         headers={"X-User-Id": f"check-{i}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            seen[response.headers.get("X-Version", "?")] += 1
    return seen["v2"] / samples


def case_url(case: str) -> str:
    path, tls = CASES[case]
    return f"https://127.0.0.1:{TLS_PORT}/{path}" if tls else f"http://127.0.0.1:{PROXY_PORT}/{path}"


def run_wrk(url: str, duration: float, connections: int, script: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{round(duration)}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(name: str, work: Path, duration: float, connections: int, script: Path) -> dict[str, Any]:
    process = PROXIES[name](work)
    try:
        wait_port(PROXY_PORT)
        wait_port(TLS_PORT)
        share = split_share()
        runs: dict[str, dict[str, Any]] = {}
        for case in CASES:
            subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", "-d1s", "-s",
                            str(script), case_url(case)],
                           capture_output=True, check=True)  # warm-up: pools, caches
            pids = process_tree(process.pid)
            before = cpu_seconds(pids)
            result = run_wrk(case_url(case), duration, connections, script)
            used = cpu_seconds(pids) - before
            result["cpu_us_per_request"] = used * 1e6 / max(1, result["requests"])
            runs[case] = result
        return {"v2_share": share, "runs": runs}
    finally:
        process.send_signal(signal.SIGTERM if name != "nginx" else signal.SIGQUIT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        wait_free(PROXY_PORT)
        wait_free(TLS_PORT)


def wait_free(port: int, timeout: float = 15) -> None:
    """Until nothing answers on ``port``: the next proxy must not find the last one still there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
        except OSError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"something still listens on {port}")


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """Medians per proxy, and ratios to nginx *paired within each round* (both measured minutes apart
    on the same machine state), reported as their median and range: drift on a shared machine moves
    absolute numbers far more than it moves these ratios."""
    summary: dict[str, Any] = {}
    lines = []
    for size in CASES:
        lines.append(f"\n### {size} responses\n")
        lines.append("| proxy | req/s | p50 ms | p99 ms | CPU-us/req (min-max) | CPU / nginx (min-max) "
                     "| req/s / nginx | p99 / nginx | v2 share | errors |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        summary[size] = {}
        for name in PROXIES:
            runs = [r[name]["runs"][size] for r in rounds]
            base = [r["nginx"]["runs"][size] for r in rounds]
            cpu = [run["cpu_us_per_request"] for run in runs]
            cpu_ratio = [a["cpu_us_per_request"] / b["cpu_us_per_request"] for a, b in zip(runs, base, strict=True)]
            rps_ratio = [a["rps"] / b["rps"] for a, b in zip(runs, base, strict=True)]
            p99_ratio = [a["p99_ms"] / b["p99_ms"] for a, b in zip(runs, base, strict=True)]
            row = {
                "rps": statistics.median(run["rps"] for run in runs),
                "p50_ms": statistics.median(run["p50_ms"] for run in runs),
                "p99_ms": statistics.median(run["p99_ms"] for run in runs),
                "cpu_us_per_request": statistics.median(cpu),
                "cpu_range": [min(cpu), max(cpu)],
                "cpu_vs_nginx": statistics.median(cpu_ratio),
                "cpu_vs_nginx_range": [min(cpu_ratio), max(cpu_ratio)],
                "rps_vs_nginx": statistics.median(rps_ratio),
                "p99_vs_nginx": statistics.median(p99_ratio),
                "v2_share": statistics.median(r[name]["v2_share"] for r in rounds),
                "errors": sum(run["errors"] for run in runs),
            }
            summary[size][name] = row
            lines.append(
                f"| {name} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                f"| {row['cpu_us_per_request']:.1f} ({min(cpu):.1f}-{max(cpu):.1f}) "
                f"| {row['cpu_vs_nginx']:.2f}x ({min(cpu_ratio):.2f}-{max(cpu_ratio):.2f}) "
                f"| {row['rps_vs_nginx']:.2f}x | {row['p99_vs_nginx']:.2f}x | {row['v2_share']:.2f} | {row['errors']} |"
            )
    return "\n".join(lines), summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--against", type=Path, action="append", default=[], metavar="TREE",
                        help="also measure Turnout from this source tree (a checkout built in place: "
                             "`python setup.py build_ext --inplace`), to compare two versions in one run")
    parser.add_argument("--proxies", help="comma-separated: only these (nginx is always measured)")
    parser.add_argument("--cases", help=f"comma-separated: only these of {', '.join(CASES)}")
    parser.add_argument("--flags", type=int, default=0,
                        help="also measure Turnout with this many flags injected into every request")
    args = parser.parse_args()
    if args.flags:
        PROXIES[f"turnout+{args.flags}flags"] = lambda work: turnout_proxy(work, args.flags)
    for tree in args.against:
        PROXIES[f"turnout@{tree.name}"] = functools.partial(turnout_proxy, tree=tree.resolve())
    if args.proxies:
        keep = {"nginx", *args.proxies.split(",")}
        for name in [name for name in PROXIES if name not in keep]:
            del PROXIES[name]
    if args.cases:
        for case in [case for case in CASES if case not in args.cases.split(",")]:
            del CASES[case]
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        print("needs two cores: one for the proxy, one for wrk and the upstreams", file=sys.stderr)
        return 1
    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as an unprivileged user and must read the files
        script = work / "users.lua"
        script.write_text(WRK_SCRIPT)
        edge_certificate(work)
        upstreams = nginx_upstreams(work)
        rounds = []
        try:
            for i in range(args.rounds):
                order = list(PROXIES)
                order = order[i % len(order):] + order[: i % len(order)]  # rotate who goes first
                results: dict[str, dict[str, Any]] = {}
                for name in order:
                    results[name] = measure(name, work, args.duration, args.connections, script)
                    print(f"round {i + 1} {name}: " + ", ".join(
                        f"{size} {run['rps']:.0f} req/s {run['cpu_us_per_request']:.1f} µs/req"
                        for size, run in results[name]["runs"].items()
                    ), file=sys.stderr)
                rounds.append(results)
        finally:
            upstreams.send_signal(signal.SIGQUIT)
            upstreams.wait(15)
    table, summary = summarise(rounds)
    command = f"python benchmarks/run.py --rounds {args.rounds} --duration {args.duration:g} " \
              f"--connections {args.connections}" + (f" --flags {args.flags}" if args.flags else "") \
              + "".join(f" --against {tree}" for tree in args.against) \
              + (f" --proxies {args.proxies}" if args.proxies else "") \
              + (f" --cases {args.cases}" if args.cases else "")
    print(f"`{command}` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n{table}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out / f"{stamp}.json").write_text(json.dumps({"command": command, "rounds": rounds, "summary": summary},
                                                  indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
