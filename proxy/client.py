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


class ClientError(Exception):
    """One line for the user: what failed and, when the API said, which field to fix."""


def resolve(url: str | None, token: str | None, token_file: str | None) -> tuple[str, str]:
    """Where the admin API is and its token: flags, then TURNOUT_ADMIN_URL / TURNOUT_ADMIN_TOKEN, then
    the token file the default config generates."""
    url = url or os.environ.get("TURNOUT_ADMIN_URL") or DEFAULT_URL
    token = token or os.environ.get("TURNOUT_ADMIN_TOKEN")
    if not token:
        path = Path(token_file or DEFAULT_TOKEN_FILE)
        try:
            token = path.read_text().strip()
        except OSError:
            raise ClientError(f"no admin token: pass --token, set TURNOUT_ADMIN_TOKEN or --token-file "
                              f"(tried {path})") from None
    return url.rstrip("/"), token


class AdminClient:
    def __init__(self, url: str, token: str, actor: str | None = None) -> None:
        self.url = url
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
            raise ClientError(f"cannot reach the admin API at {self.url}: {exc.reason}") from None
