"""The writer -> receiver messages (``core.wire``): one encoding both ways, and a clear refusal of
anything that is not a message of this protocol."""

from __future__ import annotations

import pytest
import yaml

from turnout.core import routing, wire
from turnout.core.errors import WireError
from turnout.core.reader import from_document

from ..integration.test_receivers import document


@pytest.mark.parametrize("line", [
    b"not json\n",
    b"[1, 2]\n",
    b'{"v": 2, "kind": "ack", "generation": 1}\n',
    b'{"v": 1, "kind": "shout"}\n',
    b'{"v": 1, "kind": "ack"}\n',
    b'{"v": 1, "kind": "snapshot", "generation": 1, "source": "x", "document": {}, "tables": [[1]]}\n',
])
def test_wire_refuses_what_is_not_a_message(line: bytes) -> None:
    with pytest.raises(WireError):
        wire.decode(line)


def test_wire_round_trip() -> None:
    config = from_document(document("127.0.0.1:1", "127.0.0.1:2", {"v1": 3, "v2": 1}), "t")
    messages: list[wire.Message] = [
        wire.Snapshot(4, "t.yaml", {"services": {}}, routing.plan(config, {})), wire.Ack(4),
        wire.Refused(5, "no"), wire.Collect(9), wire.Report(9, {"generation": 4}),
        wire.Poll("edge-1", "127.0.0.1:8080", 4, 0, "", {"versions": []}),
    ]
    for message in messages:
        assert wire.decode(wire.encode(message)) == message
    assert yaml.safe_load(wire.encode(wire.Ack(1)))["v"] == wire.PROTOCOL
