"""A small client for the admin API, for the ``turnout`` command (standard library only, synchronous)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["AdminClient", "ClientError", "resolve"]

DEFAULT_URL = "http://127.0.0.1:9901"
DEFAULT_TOKEN_FILE = "config/admin.token"
CONTROLLER_URL = "http://127.0.0.1:9911"
CONTROLLER_TOKEN_FILE = "config/controller.token"


class ClientError(Exception):
    """One line for the user: what failed and, when the API said, which field to fix."""


def resolve(url: str | None, token: str | None, token_file: str | None,
            controller: str | None = None) -> tuple[str, str, str]:
    """Which admin API to talk to, its token, and what it is ("controller" or "admin API"):
    1. ``--controller URL`` or TURNOUT_CONTROLLER_URL: the controller (token: ``--token``,
       TURNOUT_CONTROLLER_TOKEN, ``--token-file``, or config/controller.token);
    2. ``--admin URL`` or TURNOUT_ADMIN_URL: a proxy's admin API (token: ``--token``,
       TURNOUT_ADMIN_TOKEN, ``--token-file``, or config/admin.token);
    3. otherwise the demo of ``make run``: its controller if config/controller.token exists, else the
       standalone proxy's admin API."""
    controller = controller or os.environ.get("TURNOUT_CONTROLLER_URL")
    admin = url or os.environ.get("TURNOUT_ADMIN_URL")
    if controller is None and admin is None and Path(CONTROLLER_TOKEN_FILE).exists():
        controller = CONTROLLER_URL
    if controller is not None:
        kind, where, env, default_file = "controller", controller, "TURNOUT_CONTROLLER_TOKEN", CONTROLLER_TOKEN_FILE
    else:
        kind, where, env, default_file = "admin API", admin or DEFAULT_URL, "TURNOUT_ADMIN_TOKEN", DEFAULT_TOKEN_FILE
    token = token or os.environ.get(env)
    if not token:
        path = Path(token_file or default_file)
        try:
            token = path.read_text().strip()
        except OSError:
            raise ClientError(f"no {kind} token: pass --token, set {env} or --token-file (tried {path})") from None
    if "://" not in where:
        where = "http://" + where  # "127.0.0.1:9901" works as well
    return where.rstrip("/"), token, kind


class AdminClient:
    def __init__(self, url: str, token: str, kind: str = "admin API", actor: str | None = None) -> None:
        self.url = url
        self.kind = kind
        self.headers = {"Authorization": f"Bearer {token}",
                        "X-Turnout-Actor": actor or os.environ.get("USER", "cli")}

    def call(self, method: str, path: str, body: Any = None, if_match: int | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        if if_match is not None:
            headers["If-Match"] = str(if_match)
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read())
            except ValueError:
                answer = {}
            message = answer.get("error") or exc.reason
            field = answer.get("field")
            raise ClientError(f"{exc.code}: {message}" + (f" (field: {field})" if field else "")) from None
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach the {self.kind} at {self.url}: {exc.reason}") from None
