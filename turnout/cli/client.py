"""A small client for the admin API, for the ``turnout`` command (standard library only, synchronous)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

__all__ = ["AdminClient", "ClientError", "resolve"]

DEFAULT_URL = "http://127.0.0.1:9901"
DEFAULT_TOKEN_FILE = "config/admin.token"
CONTROLLER_URL = "http://127.0.0.1:9911"
CONTROLLER_TOKEN_FILE = "config/controller.token"


class ClientError(Exception):
    """One line for the user: what failed and, when the API said, which field to fix."""


def resolve(url: str | None, token: str | None, token_file: str | None,
            controller: str | None = None, config: str | None = None) -> tuple[str, str, str]:
    """Which admin API to talk to, its token, and what it is ("controller" or "admin API"):
    1. ``--controller URL`` or TURNOUT_CONTROLLER_URL: the controller (token: ``--token``,
       TURNOUT_CONTROLLER_TOKEN, ``--token-file``, or config/controller.token);
    2. ``--admin URL`` or TURNOUT_ADMIN_URL: a proxy's admin API (token: ``--token``,
       TURNOUT_ADMIN_TOKEN, ``--token-file``, or config/admin.token);
    3. ``--config FILE`` or TURNOUT_CONFIG: the API that config file describes (a controller's config:
       its listen address and token; a proxy's: its admin listener and token), wherever the file is;
    4. otherwise the demo of ``make run``: its controller if config/controller.token exists, else the
       standalone proxy's admin API."""
    controller = controller or os.environ.get("TURNOUT_CONTROLLER_URL")
    admin = url or os.environ.get("TURNOUT_ADMIN_URL")
    config = config or os.environ.get("TURNOUT_CONFIG")
    if controller is None and admin is None and config is not None:
        kind, where, file_token = _from_config(config)
        return where, token or file_token(token_file), kind
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


def _from_config(path: str) -> tuple[str, str, Any]:
    """(kind, URL, token reader) of the API a config file describes. Only the fields needed are read;
    ``turnout check`` is what validates a file."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from None
    raw = raw if isinstance(raw, dict) else {}
    base = Path(path).resolve().parent
    section = raw.get("controller")
    if isinstance(section, dict) and "url" not in section:  # a controller's own config
        kind, listen, default = "controller", section.get("listen", "127.0.0.1:9911"), "controller.token"
    else:
        section = raw.get("admin")
        if not isinstance(section, dict):
            raise ClientError(f"{path} has no admin section: its proxy serves no admin API")
        kind, listen, default = "admin API", section.get("listen", "127.0.0.1:9901"), "admin.token"
    host, _, port = str(listen).rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0") else host.strip("[]")
    host = f"[{host}]" if ":" in host else host
    env, file = section.get("token_env"), section.get("token_file", default)

    def read(given_file: str | None) -> str:
        if env and not given_file:
            value = os.environ.get(str(env), "")
            if not value:
                raise ClientError(f"{path}: its token is in ${env}, which is not set here")
            return value
        target = Path(given_file) if given_file else base / str(file)
        try:
            return target.read_text().strip()
        except OSError as exc:
            raise ClientError(f"cannot read the token file {target}: {exc.strerror}") from None

    return kind, f"http://{host}:{port}", read


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
