"""Bearer tokens of the admin APIs (a proxy's, the controller's) and of a managed proxy's controller:
read once at start, from an environment variable or a token file; a missing token file may be created
(mode 0600) with a random token. Every failure is a ``ConfigError`` naming the config field.

With ``statefile``, the core's only file I/O: both processes need the very same rules, and neither may
import the other's shell.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from turnout.core.errors import ConfigError

__all__ = ["PROBES", "bearer", "load", "matches", "refusal"]

PROBES = frozenset({"/ready", "/live"})  # health probes (Docker, Kubernetes) carry no token; they reveal nothing


def load(source: str, section: str, token_env: str | None, token_file: str | None, create: bool) -> str:
    """The token of config section ``section``: ``token_env`` wins; else ``token_file``, created with
    a random token when ``create`` and it does not exist yet."""
    if token_env is not None:
        token = os.environ.get(token_env, "")
        if not token:
            raise ConfigError(source, f"{section}.token_env", f"environment variable {token_env} is not set")
        return token
    assert token_file is not None
    path = Path(token_file)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            raise ConfigError(source, f"{section}.token_file",
                              f"cannot read {path}: No such file or directory") from None
        token = secrets.token_urlsafe(32)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(token + "\n")
        return token
    except OSError as exc:
        raise ConfigError(source, f"{section}.token_file", f"cannot read {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(source, f"{section}.token_file", f"{path} is empty")
    return token


def bearer(authorization: str) -> bytes:
    """The token an ``Authorization: Bearer …`` header presents (empty for any other scheme)."""
    scheme, _, given = authorization.partition(" ")
    return given.strip().encode() if scheme.lower() == "bearer" else b""


def matches(presented: bytes, *allowed: bytes) -> bool:
    """Constant-time comparison against each allowed token."""
    return any(hmac.compare_digest(presented, token) for token in allowed)


def refusal(path: str, method: str, headers: Mapping[str, str], expected: bytes) -> tuple[int, str] | None:
    """Why an admin API request is refused — (401 or 403, message) — or None if it may go on: health
    probes need nothing, requests from web pages (an ``Origin`` header) are refused, every other one
    needs the bearer token. The same rule for the proxy's admin API and the controller's."""
    if path in PROBES and method in ("GET", "HEAD"):
        return None
    if "Origin" in headers:
        return 403, "requests from web pages (with an Origin header) are refused"
    if not matches(bearer(headers.get("Authorization", "")), expected):
        return 401, "missing or wrong bearer token"
    return None
