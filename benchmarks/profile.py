"""Where a proxied request's CPU goes: `perf record` of one proxy under `wrk`, summed by library.

    .venv/bin/python benchmarks/profile.py [--case 100B] [--seconds 6] [--proxy turnout]

The same set-up as run.py (the nginx upstreams and wrk on core 1, the proxy alone on core 0), one proxy
and one case; perf samples the proxy's serving process (cpu-clock, 2 kHz) while wrk drives it, then the
samples are summed by shared object: the kernel (system calls, loopback TCP), the Python runtime, the
compiled hot path, httptools (llhttp), uvloop, libc, OpenSSL. Needs `perf` (Debian: linux-perf) and root
or a permissive kernel.perf_event_paranoid.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="100B", choices=list(run.CASES))
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--proxy", default="turnout", choices=list(run.PROXIES))
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("needs perf (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 1
    run.ensure_tools()
    with tempfile.TemporaryDirectory(prefix="turnout-profile-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        script = work / "users.lua"
        script.write_text(run.WRK_SCRIPT)
        run.edge_certificate(work)
        upstreams = run.nginx_upstreams(work)
        proxy = run.PROXIES[args.proxy](work)
        try:
            run.wait_port(run.PROXY_PORT)
            run.wait_port(run.TLS_PORT)
            url = run.case_url(args.case)
            wrk = ["taskset", "-c", run.LOAD_CORE, "wrk", "-t1", "-c64", "-s", str(script)]
            subprocess.run([*wrk, "-d1s", url], capture_output=True, check=True)  # warm-up
            serving = run.process_tree(proxy.pid)[-1]  # the worker, not a supervisor
            load = subprocess.Popen([*wrk, f"-d{args.seconds + 2}s", url], stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            data = work / "perf.data"
            subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-p", str(serving), "-o", str(data),
                            "--", "sleep", str(args.seconds)], capture_output=True, check=True)
            rate = re.search(r"Requests/sec:\s+([\d.]+)", load.communicate()[0])
            report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso",
                                     "-g", "none", "--stdio"], capture_output=True, text=True, check=True).stdout
        finally:
            proxy.send_signal(signal.SIGTERM if args.proxy != "nginx" else signal.SIGQUIT)
            proxy.wait(15)
            upstreams.send_signal(signal.SIGQUIT)
            upstreams.wait(15)
    print(f"{args.proxy}, {args.case}: {rate.group(1) if rate else '?'} req/s under perf")
    for line in report.splitlines():
        found = re.match(r"\s+([\d.]+)%\s+(\S+)", line)
        if found and float(found.group(1)) >= 0.1:
            print(f"{float(found.group(1)):6.1f} %  {found.group(2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
