"""The messages between a writer of routing state and its receivers, and their one encoding.

The writer (a proxy's supervisor now, the controller later) computes each generation once: its number,
its effective routing document and its bucket tables. It ships a ``Snapshot``; a receiver applies
exactly that snapshot and answers ``Ack``, or applies nothing and answers ``Refused`` with the reason.
A receiver never renumbers, never rebalances, and never builds on a snapshot it refused: the next
``Snapshot`` is complete in itself, so a receiver that refused one catches up with the next. ``Collect``
asks a receiver for its counters, answered by ``Report``. A proxy that follows a controller asks for
snapshots with ``Poll``, which also says what it serves, what it refused and its counters.

Encoding: one JSON object per line, ``{"v": PROTOCOL, "kind": ..., ...fields}``. ``decode`` refuses a
line of another protocol version, an unknown kind or missing fields with ``WireError``, never a crash.

Pure: bytes in, messages out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from . import buckets
from .errors import WireError

__all__ = ["PROTOCOL", "Ack", "Collect", "Message", "Poll", "Refused", "Report", "Snapshot", "decode",
           "encode"]

PROTOCOL = 1


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: int
    source: str  # the config file the document came from: what validation errors name
    document: Any  # the effective routing document, validated by the receiver with ``core.reader``
    tables: buckets.Tables  # every bucket table the document needs, exactly as the writer planned them


@dataclass(frozen=True, slots=True)
class Ack:
    generation: int  # the generation the receiver now serves


@dataclass(frozen=True, slots=True)
class Refused:
    generation: int  # the generation it refused (it keeps serving the one before)
    reason: str


@dataclass(frozen=True, slots=True)
class Collect:
    request: int


@dataclass(frozen=True, slots=True)
class Report:
    request: int
    stats: dict[str, Any]  # the receiver's counters, generation and endpoint health (``Worker.snapshot``)


@dataclass(frozen=True, slots=True)
class Poll:
    """A proxy's long poll of its controller: "I serve ``generation``; anything newer?"."""

    proxy: str  # its id
    address: str  # where it serves (its first listener), for people reading the fleet list
    generation: int  # the generation it serves
    refused: int  # the last generation it refused (0: none since it last applied one)
    reason: str  # why
    stats: dict[str, Any]  # its cumulative counters (``Worker.snapshot``, summed over its workers)


Message = Snapshot | Ack | Refused | Collect | Report | Poll

_KINDS: dict[str, type[Message]] = {"snapshot": Snapshot, "ack": Ack, "refused": Refused, "collect": Collect,
                                    "report": Report, "poll": Poll}
_NAMES = {kind: name for name, kind in _KINDS.items()}


def encode(message: Message) -> bytes:
    body: dict[str, Any] = {"v": PROTOCOL, "kind": _NAMES[type(message)]}
    for item in fields(message):
        value = getattr(message, item.name)
        body[item.name] = buckets.encode_tables(value) if item.name == "tables" else value
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes | str) -> Message:
    try:
        body = json.loads(line)
    except ValueError as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise WireError("a message is a JSON object")
    if body.get("v") != PROTOCOL:
        raise WireError(f"protocol version {body.get('v')!r}, this side speaks {PROTOCOL}")
    kind = _KINDS.get(body.get("kind"))  # type: ignore[arg-type]
    if kind is None:
        raise WireError(f"unknown message kind {body.get('kind')!r}")
    try:
        values = {item.name: body[item.name] for item in fields(kind)}
        if "tables" in values:
            values["tables"] = buckets.decode_tables(values["tables"])
        return kind(**values)
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"a {body['kind']} message without a valid {exc}") from None
