"""The request head's pure steps (``proxy.http.head``), table by table."""

from __future__ import annotations

import pytest

from proxy.http.head import Fields, end_to_end, read_fields, request_target, sticky_cookie, upstream_head
from proxy.http.http1 import Reject
from turnout.core.model import Sticky

H = list[tuple[bytes, bytes]]


@pytest.mark.parametrize(("headers", "facts"), [
    ([(b"Host", b"a")], {"host": b"a", "chunked": False, "length": None, "tokens": None}),
    ([(b"Host", b"a"), (b"Content-Length", b"5")], {"length": b"5"}),
    ([(b"Transfer-Encoding", b"chunked")], {"chunked": True, "host": None}),
    ([(b"Connection", b"keep-alive"), (b"connection", b"Upgrade")], {"tokens": {b"keep-alive", b"upgrade"}}),
    ([(b"Upgrade", b"websocket")], {"upgrade": b"websocket"}),
    ([(b"TE", b"trailers, deflate")], {"te_trailers": True}),
    ([(b"TE", b"deflate")], {"te_trailers": False}),
    ([(b"Expect", b"100-Continue")], {"expect_continue": True}),
    ([(b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")], {"forwarded_for": b"1.1.1.1, 2.2.2.2"}),
])
def test_read_fields_finds_the_framing_facts(headers: H, facts: dict[str, object]) -> None:
    found = read_fields(headers, frozenset())
    assert {name: getattr(found, name) for name in facts} == facts


@pytest.mark.parametrize(("headers", "lines", "routing"), [
    # End-to-end fields are forwarded as received; hop-by-hop and X-Forwarded-* never are.
    ([(b"Host", b"a"), (b"Accept", b"*/*"), (b"Keep-Alive", b"5"), (b"X-Forwarded-Proto", b"https")],
     b"Accept: */*\r\n", {}),
    # Only the fields routing reads are decoded; repeats are joined (cookies with "; ").
    ([(b"X-User", b"u1"), (b"x-user", b"u2"), (b"Cookie", b"a=1"), (b"cookie", b"b=2"), (b"X-Other", b"o")],
     b"X-User: u1\r\nx-user: u2\r\nCookie: a=1\r\ncookie: b=2\r\nX-Other: o\r\n",
     {"x-user": "u1, u2", "cookie": "a=1; b=2"}),
    # Connection names an end-to-end field: dropped from both views.
    ([(b"Connection", b"x-user"), (b"X-User", b"u1"), (b"Accept", b"*/*")], b"Accept: */*\r\n", {}),
    # Expect is read and forwarded.
    ([(b"Expect", b"100-continue")], b"Expect: 100-continue\r\n", {}),
])
def test_read_fields_forwards_end_to_end_lines_and_decodes_only_what_routing_reads(
        headers: H, lines: bytes, routing: dict[str, str]) -> None:
    found = read_fields(headers, frozenset({b"x-user", b"cookie"}))
    assert b"".join(found.lines) == lines
    assert found.routing == routing


def test_read_fields_refuses_a_second_host() -> None:
    with pytest.raises(Reject) as refused:
        read_fields([(b"Host", b"a"), (b"host", b"b")], frozenset())
    assert refused.value.status == 400 and "duplicate Host" in refused.value.reason


@pytest.mark.parametrize(("skip", "lines"), [
    (frozenset(), b"Cookie: a=1\r\nX-Flags: mine\r\nAccept: */*\r\n"),
    (frozenset({b"cookie", b"x-flags"}), b"Accept: */*\r\n"),
])
def test_end_to_end_skips_what_the_proxy_replaces(skip: frozenset[bytes], lines: bytes) -> None:
    headers = [(b"Host", b"a"), (b"Cookie", b"a=1"), (b"X-Flags", b"mine"), (b"Accept", b"*/*"), (b"X-Gone", b"1")]
    assert b"".join(end_to_end(headers, {b"x-gone"}, skip)) == lines


@pytest.mark.parametrize(("url", "method", "host", "expected"), [
    (b"/a?b=1", b"GET", b"h", (b"/a?b=1", b"h")),
    (b"*", b"OPTIONS", b"h", (b"*", b"h")),
    (b"http://other:8080/x?y", b"GET", b"h", (b"/x?y", b"other:8080")),
    (b"HTTPS://other", b"GET", None, (b"/", b"other")),
    (b"http://other?q", b"GET", None, (b"/?q", b"other")),
])
def test_request_target_normalises_absolute_form(url: bytes, method: bytes, host: bytes | None,
                                                 expected: tuple[bytes, bytes]) -> None:
    assert request_target(url, method, host) == expected


@pytest.mark.parametrize(("url", "method", "reason"), [
    (b"*", b"GET", "only a target for OPTIONS"),
    (b"http:///x", b"GET", "bad authority"),
    (b"http://user@host/", b"GET", "bad authority"),
    (b"ftp://host/", b"GET", "bad request target"),
    (b"x", b"GET", "bad request target"),
])
def test_request_target_refuses_odd_targets(url: bytes, method: bytes, reason: str) -> None:
    with pytest.raises(Reject) as refused:
        request_target(url, method, b"h")
    assert refused.value.status == 400 and reason in refused.value.reason


def test_sticky_cookie_joins_the_clients_cookies_in_one_line() -> None:
    sticky = Sticky("cookie", "tid", assign=True, max_age=60)
    line, set_cookie = sticky_cookie([(b"Cookie", b"a=1"), (b"cookie", b"b=2")], sticky, "k1")
    assert b"".join(line) == b"Cookie: a=1; b=2; tid=k1\r\n"
    assert set_cookie == b"Set-Cookie: tid=k1; Path=/; Max-Age=60; HttpOnly; SameSite=Lax\r\n"


@pytest.mark.parametrize(("headers", "upgrade", "framing"), [
    ([], False, b""),
    ([(b"Content-Length", b"007")], False, b"Content-Length: 7\r\n"),
    ([(b"Transfer-Encoding", b"chunked"), (b"TE", b"trailers")], False,
     b"Transfer-Encoding: chunked\r\nTE: trailers\r\n"),
    ([(b"Upgrade", b"websocket")], True, b"Connection: upgrade\r\nUpgrade: websocket\r\n"),
])
def test_upstream_head_is_rebuilt_with_computed_framing(headers: H, upgrade: bool, framing: bytes) -> None:
    fields: Fields = read_fields([(b"X-Forwarded-For", b"9.9.9.9"), *headers], frozenset())
    head = upstream_head(b"POST", b"/p", b"shop", fields, [b"Accept: */*\r\n"], b"127.0.0.1", b"https", upgrade)
    assert head == (b"POST /p HTTP/1.1\r\nHost: shop\r\nAccept: */*\r\n"
                    b"X-Forwarded-For: 9.9.9.9, 127.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: shop\r\n"
                    + framing + b"\r\n")
