"""HTTP/1.1 wire details shared by both sides of the proxy: which headers are hop-by-hop, status lines,
chunk framing and the small responses the proxy writes itself. No I/O here."""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

__all__ = [
    "HOP_BY_HOP",
    "PLAIN_TOKENS",
    "Reject",
    "chunk",
    "connection_tokens",
    "local_response",
    "status_line",
]

# Hop-by-hop headers (RFC 9110 §7.6.1) plus the framing headers, which the proxy always recomputes,
# and the h2c upgrade settings, which must not reach an HTTP/1.1 upstream.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"http2-settings",
    }
)

# Connection tokens that name no other header: anything else in Connection makes that header hop-by-hop.
PLAIN_TOKENS: Final = frozenset({b"keep-alive", b"close", b"upgrade"})

LAST_CHUNK: Final = b"0\r\n\r\n"
CRLF: Final = b"\r\n"


class Reject(Exception):
    """A request the proxy answers itself with ``status`` and then closes (parse and policy errors)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# Connection header value -> its tokens. Upstreams and clients send a handful of values ("keep-alive",
# "close"), so each is split once; bounded, so that invented values cannot grow it.
_TOKENS: Final[dict[bytes, frozenset[bytes]]] = {}
_TOKENS_KEPT: Final = 256


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lower-cased tokens of a Connection header: the headers it names are hop-by-hop too."""
    tokens = _TOKENS.get(value)
    if tokens is None:
        tokens = frozenset(token.strip().lower() for token in value.split(b",") if token.strip())
        if len(_TOKENS) < _TOKENS_KEPT:
            _TOKENS[value] = tokens
    return tokens


def chunk(data: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bytes]:
    """One chunk of a chunked body, as pieces for a single joined write."""
    return (b"%x\r\n" % len(data), data, CRLF)


_STATUS_LINES: Final[dict[int, bytes]] = {}
_RELAYED_LINES: Final[dict[tuple[int, bytes], bytes]] = {}


def status_line(status: int, reason: bytes | None = None) -> bytes:
    if reason is not None:
        key = (status, reason)
        cached = _RELAYED_LINES.get(key)
        if cached is None:
            cached = b"HTTP/1.1 %d %s\r\n" % key
            if len(_RELAYED_LINES) < 512:  # upstreams use a handful of reasons; don't grow without end
                _RELAYED_LINES[key] = cached
        return cached
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b""
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
    return line


def local_response(status: int, message: str, close: bool, head_only: bool = False,
                   extra: bytes = b"") -> bytes:
    """A complete small response written by the proxy itself (errors, redirects)."""
    body = (message + "\n").encode()
    head = b"".join(
        (
            status_line(status),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Connection: close\r\n" if close else b"",
            extra,
            CRLF,
        )
    )
    return head if head_only else head + body
