#!/opt/turnout/bin/python3
"""``turnout-health``: the HEALTHCHECK of Turnout's image (the Dockerfile copies it to /usr/local/bin).

It asks the process the container runs, at the address that process's config gives it:
1. ``TURNOUT_HEALTH_URL``, when set, is asked as it is (any HTTP server: an app's own port);
2. else, when the image's entrypoint started a proxy or a controller, the config it started with
   (the link ``/run/turnout/config.yaml``, which the entrypoint makes): a controller's ``listen`` or a
   proxy's ``admin.listen``, ``GET /ready`` (no token needed); a proxy without an admin API: a TCP
   connect to its first listener;
3. else the container runs something other than Turnout (an app image built ``FROM turnout`` with its
   own entrypoint): there is nothing of Turnout's to check, and the check passes. Such an image should
   declare its own ``HEALTHCHECK`` (or ``HEALTHCHECK NONE``: then ``turnout deploy`` asks its health path).

Exit 0 healthy, 1 unhealthy (Docker's convention), with one line saying why.
Standard library and PyYAML only: it runs in the image's virtualenv, apart from the turnout package."""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

RECORD = Path("/run/turnout/config.yaml")
TIMEOUT = 2.0  # seconds; the HEALTHCHECK's own timeout is 3 s


def _address(listen: object, default: str) -> tuple[str, int]:
    """``host:port`` of a listen address as a client on the same host reaches it."""
    host, _, port = str(listen or default).rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def target(config: Any) -> tuple[str, str, int]:
    """What to ask for a Turnout config: ("http", host, port) for GET /ready, or ("tcp", host, port)."""
    config = config if isinstance(config, dict) else {}
    controller = config.get("controller")
    if isinstance(controller, dict) and "url" not in controller:  # a controller's own config
        return ("http", *_address(controller.get("listen"), "127.0.0.1:9911"))
    admin = config.get("admin")
    if isinstance(admin, dict):
        return ("http", *_address(admin.get("listen"), "127.0.0.1:9901"))
    listeners = config.get("listeners")
    first = listeners[0] if isinstance(listeners, list) and listeners and isinstance(listeners[0], dict) else {}
    return ("tcp", *_address(first.get("listen") or config.get("listen"), "127.0.0.1:8080"))


def _get(url: str) -> tuple[bool, str]:
    """Whether ``url`` answers below 400, and what was seen."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return True, f"GET {url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"GET {url}: {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"GET {url}: {exc}"


def check() -> tuple[bool, str]:
    """Whether the container is healthy, and what was asked (Docker keeps it in its health log)."""
    url = os.environ.get("TURNOUT_HEALTH_URL")
    if url:
        return _get(url)
    if not RECORD.is_symlink():
        return True, "no Turnout process here: nothing to check"  # see the module docstring
    try:
        config = yaml.safe_load(RECORD.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        return False, f"cannot read {RECORD.resolve()}: {exc}"
    kind, host, port = target(config)
    shown = f"[{host}]" if ":" in host else host
    if kind == "http":
        return _get(f"http://{shown}:{port}/ready")
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
    except OSError as exc:
        return False, f"connect {shown}:{port}: {exc}"
    return True, f"connect {shown}:{port}: accepted"


def main() -> int:
    healthy, seen = check()
    print(seen)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
