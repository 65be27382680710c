"""The request head, from what the client sent to what the upstream receives: pure functions that
``Downstream.prepare`` runs in order, each table-tested on its own (``tests/unit/test_head.py``).

1. ``read_fields``: one pass over the received header fields: the framing and hop-by-hop facts the
   proxy needs, the end-to-end lines it forwards, and the few fields routing reads (decoded once);
   a duplicate Host is refused here.
2. ``request_target``: origin-form as is, absolute-form normalised to origin-form with its authority
   as Host (RFC 9112 §3.2.2), ``*`` for OPTIONS only.
3. ``end_to_end``: the forwarded lines again, without the headers Connection names and those the
   proxy replaces (a client's own copy of the injected flags header, or its Cookie line when the
   proxy assigns a sticky key).
4. ``sticky_cookie``: the Cookie line the upstream sees and the Set-Cookie the client gets when the
   proxy assigns a fresh sticky key.
5. ``upstream_head``: the request line, Host, the end-to-end lines, X-Forwarded-*, and the framing
   headers the proxy computes itself; the upstream request is re-framed, never copied.

No I/O and no clock: bytes in, bytes out; a refusal is ``Reject`` with its status.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Final

from turnout.core.model import Sticky

from .http1 import HOP_BY_HOP, PLAIN_TOKENS, Reject, connection_tokens

__all__ = ["Fields", "end_to_end", "read_fields", "request_target", "sticky_cookie", "upstream_head"]

Headers = list[tuple[bytes, bytes]]

# Headers never passed on as received (the proxy writes its own), and those ``read_fields`` also looks at.
DROPPED: Final = HOP_BY_HOP | {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
_SPECIAL: Final = DROPPED | {b"expect"}


class Fields:
    """What one pass over a request's header fields found. (A plain slotted class: one per request.)"""

    __slots__ = ("chunked", "expect_continue", "forwarded_for", "host", "length", "lines", "routing", "te_trailers",
                 "tokens", "upgrade")

    def __init__(self, host: bytes | None, length: bytes | None, chunked: bool, tokens: AbstractSet[bytes] | None,
                 upgrade: bytes, te_trailers: bool, expect_continue: bool, forwarded_for: bytes,
                 routing: dict[str, str], lines: list[bytes]) -> None:
        self.host = host
        self.length = length  # Content-Length as received (llhttp checked it is one number)
        self.chunked = chunked
        self.tokens = tokens  # Connection's tokens
        self.upgrade = upgrade
        self.te_trailers = te_trailers
        self.expect_continue = expect_continue
        self.forwarded_for = forwarded_for
        self.routing = routing  # lower-case names; repeated fields joined; only what routing reads
        self.lines = lines  # the end-to-end lines as received, ready to join


def read_fields(headers: Headers, wanted: AbstractSet[bytes]) -> Fields:
    """One pass over the header fields. ``wanted``: the lower-case names routing reads (the snapshot's
    ``header_names``); only those are decoded. ``Reject(400)`` for a second Host."""
    host: bytes | None = None
    length: bytes | None = None
    chunked = te_trailers = expect_continue = False
    tokens: AbstractSet[bytes] | None = None
    upgrade = forwarded_for = b""
    routing: dict[str, str] = {}
    lines: list[bytes] = []
    for name, value in headers:
        lname = name.lower()
        if lname in _SPECIAL:
            if lname == b"host":
                if host is not None:
                    raise Reject(400, "duplicate Host header")
                host = value
            elif lname == b"connection":
                tokens = connection_tokens(value) if tokens is None else tokens | connection_tokens(value)
            elif lname == b"content-length":
                length = value
            elif lname == b"transfer-encoding":
                chunked = True
            elif lname == b"upgrade":
                upgrade = value
            elif lname == b"te":
                te_trailers = b"trailers" in value.lower()
            elif lname == b"x-forwarded-for":
                forwarded_for = value if not forwarded_for else forwarded_for + b", " + value
            if lname != b"expect":
                continue
            expect_continue = value.lower() == b"100-continue"
        lines += (name, b": ", value, b"\r\n")
        if lname in wanted:
            key = lname.decode("latin-1")
            previous = routing.get(key)
            text = value.decode("latin-1")
            routing[key] = text if previous is None else previous + ("; " if key == "cookie" else ", ") + text
    if tokens is not None and not tokens <= PLAIN_TOKENS:
        # Rare: the client named end-to-end headers as hop-by-hop. Drop them from both views.
        lines = end_to_end(headers, tokens)
        for token in tokens:
            routing.pop(token.decode("latin-1"), None)
    return Fields(host, length, chunked, tokens, upgrade, te_trailers, expect_continue, forwarded_for, routing, lines)


def end_to_end(headers: Headers, tokens: AbstractSet[bytes], skip: AbstractSet[bytes] = frozenset()) -> list[bytes]:
    """The request's end-to-end header lines, without those named in Connection (and ``skip``)."""
    lines: list[bytes] = []
    for name, value in headers:
        lname = name.lower()
        if lname not in DROPPED and lname not in tokens and lname not in skip:
            lines += (name, b": ", value, b"\r\n")
    return lines


def request_target(url: bytes, method: bytes, host: bytes | None) -> tuple[bytes, bytes | None]:
    """(target, host): origin-form as is; absolute-form normalised to origin-form with its authority
    as Host, so routing and forwarding see the same bytes; '*' for OPTIONS only."""
    if url.startswith(b"/"):
        return url, host
    if url == b"*":
        if method != b"OPTIONS":
            raise Reject(400, "'*' is only a target for OPTIONS")
        return url, host
    lowered = url[:8].lower()
    if lowered.startswith(b"http://") or lowered.startswith(b"https://"):
        rest = url[url.index(b"//") + 2 :]
        end = len(rest)
        for stop in (b"/", b"?"):
            found = rest.find(stop)
            if found != -1:
                end = min(end, found)
        authority, target = rest[:end], rest[end:]
        if not authority or b"@" in authority:
            raise Reject(400, "bad authority in request target")
        if not target.startswith(b"/"):
            target = b"/" + target
        return target, authority
    raise Reject(400, "bad request target")


def sticky_cookie(headers: Headers, sticky: Sticky, key: str) -> tuple[list[bytes], bytes]:
    """A fresh sticky key: the Cookie line the upstream gets (the client's cookies plus the key, in
    the one Cookie line RFC 6265 allows, as if the client had sent it) and the client's Set-Cookie."""
    cookie = f"{sticky.name}={key}".encode()
    sent = [value for name, value in headers if name.lower() == b"cookie"]
    line = [b"Cookie: ", b"; ".join([*sent, cookie]), b"\r\n"]
    return line, b"Set-Cookie: %s; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax\r\n" % (cookie, sticky.max_age)


def upstream_head(method: bytes, target: bytes, host: bytes, fields: Fields, lines: list[bytes],
                  client_ip: bytes, scheme: bytes, forward_upgrade: bool) -> bytes:
    """The head the upstream receives: rebuilt, with framing headers computed here."""
    forwarded_for = fields.forwarded_for
    out = [method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n", *lines,
           b"X-Forwarded-For: ", forwarded_for + b", " if forwarded_for else b"", client_ip,
           b"\r\nX-Forwarded-Proto: ", scheme, b"\r\nX-Forwarded-Host: ", host, b"\r\n"]
    if fields.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif fields.length is not None:
        out.append(b"Content-Length: %d\r\n" % int(fields.length))
    if fields.te_trailers:
        out.append(b"TE: trailers\r\n")
    if forward_upgrade:
        out += (b"Connection: upgrade\r\nUpgrade: ", fields.upgrade, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)
