"""Turnout's errors: one tree, each error carrying what maps it to an answer.

    TurnoutError             status: the HTTP answer; field: what to fix; message: one line for a person
    ├── ConfigError          a config that cannot be served: the file (source) and the field path; 422
    ├── ChangeError          an admin change, command or request that is refused: the status it gives
    │   ├── RolloutError     a command the rollout's phase does not take (controller.engine.rollout)
    │   └── DeployError      a deploy that cannot start or move (controller.engine.deploy)
    └── WireError            a message between processes that is not one of the protocol's; 400

The admin APIs answer any ``TurnoutError`` as ``{"error": message, "field": field}`` with its status,
and the CLI prints its message on one line, so no layer translates one error into another.
``ConfigError`` and ``WireError`` are ``ValueError`` too: reading bad data is a value error.
"""

from __future__ import annotations

__all__ = ["ChangeError", "ConfigError", "TurnoutError", "WireError"]


class TurnoutError(Exception):
    status = 400

    def __init__(self, message: str, field: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status


class ConfigError(TurnoutError, ValueError):
    """A configuration that cannot be served; ``str()`` says where: ``source: path: message``."""

    status = 422

    def __init__(self, source: str, path: str, message: str) -> None:
        where = f"{source}: {path}" if path else source
        super().__init__(message, path)
        self.args = (f"{where}: {message}",)
        self.source, self.path = source, path


class ChangeError(TurnoutError):
    """An admin change that cannot apply; ``status`` is the HTTP answer, ``field`` what to fix."""

    def __init__(self, status: int, message: str, field: str = "") -> None:
        super().__init__(message, field, status)


class WireError(TurnoutError, ValueError):
    """A line that is not a message of this protocol."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "body", 400)
