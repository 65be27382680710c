"""Routing through real sockets: the split ratio, rules, stickiness, assigned key cookies."""

from __future__ import annotations

import math
from collections import Counter

import aiohttp

from ..helpers import service


async def versions_seen(port: int, count: int, headers_of=lambda i: {}, path: str = "/") -> list[str]:
    seen = []
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers_of(i)) as response:
                assert response.status == 200
                seen.append(response.headers["X-Version"])
    return seen


def within_bound(observed: int, total: int, share: float, sigmas: float = 5.0) -> bool:
    expected = total * share
    return abs(observed - expected) <= sigmas * math.sqrt(total * share * (1 - share))


async def test_weighted_random_split_ratio(upstreams, proxy) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    worker = await proxy({"s": service({"v1": [v1.address], "v2": [v2.address]},
                                       split={"v1": 900_000, "v2": 100_000})})
    seen = Counter(await versions_seen(worker.port, 2000))
    assert within_bound(seen["v2"], 2000, 0.10), seen


async def test_sticky_split_ratio_over_many_keys_and_same_key_same_version(upstreams, proxy) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    worker = await proxy({"s": service({"v1": [v1.address], "v2": [v2.address]},
                                       split={"v1": 70, "v2": 30}, sticky={"header": "X-User"})})
    by_key = await versions_seen(worker.port, 2000, lambda i: {"X-User": f"user-{i}"})
    assert within_bound(Counter(by_key)["v2"], 2000, 0.30), Counter(by_key)
    same = await versions_seen(worker.port, 1000, lambda i: {"X-User": "alice"})
    assert len(set(same)) == 1


async def test_rules_match_headers_cookies_query_path_and_method(upstreams, proxy) -> None:
    v1, v2, v3 = await upstreams("v1"), await upstreams("v2"), await upstreams("v3")
    rules: list[dict[str, object]] = [
        {"name": "hdr", "match": {"headers": {"x-beta": "yes"}}, "version": "v2"},
        {"name": "cookie", "match": {"cookies": {"canary": "1"}}, "version": "v3"},
        {"name": "query", "match": {"query": {"preview": {"present": True}}}, "version": "v2"},
        {"name": "path", "match": {"path": {"prefix": "/v3/"}, "method": "POST"}, "version": "v3"},
        {"name": "default", "version": "v1"},
    ]
    worker = await proxy({"s": service({"v1": [v1.address], "v2": [v2.address], "v3": [v3.address]}, rules)})
    base = f"http://127.0.0.1:{worker.port}"
    cases = [
        ("GET", "/", {"X-Beta": "yes"}, "v2"),
        ("GET", "/", {"X-Beta": "no"}, "v1"),
        ("GET", "/", {"Cookie": "a=b; canary=1"}, "v3"),
        ("GET", "/x?preview", {}, "v2"),
        ("POST", "/v3/items", {}, "v3"),
        ("GET", "/v3/items", {}, "v1"),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, headers, expected in cases:
            async with session.request(method, base + path, headers=headers) as response:
                assert response.headers["X-Version"] == expected, (method, path, headers)


async def test_cookie_stickiness_assigns_keys_to_anonymous_clients(upstreams, proxy) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    worker = await proxy({"s": service({"v1": [v1.address], "v2": [v2.address]}, split={"v1": 50, "v2": 50},
                                       sticky={"cookie": "tid", "assign": True, "max_age": 600})})
    url = f"http://127.0.0.1:{worker.port}/"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # a browser
        async with session.get(url) as first:
            set_cookie = first.headers["Set-Cookie"]
            version = first.headers["X-Version"]
            echoed = await first.json()
        assert set_cookie.startswith("tid=") and "Max-Age=600" in set_cookie and "HttpOnly" in set_cookie
        key = set_cookie.split(";")[0].split("=")[1]
        # The upstream saw the key it was routed by, in the Cookie header.
        assert ["Cookie", f"tid={key}"] in echoed["headers"]
        for _ in range(50):
            async with session.get(url) as response:
                assert "Set-Cookie" not in response.headers
                assert response.headers["X-Version"] == version
    # A client with cookies of its own, but not ours: one Cookie line, theirs first, then the key.
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Cookie": "theme=dark; lang=en"}) as response:
            key = response.headers["Set-Cookie"].split(";")[0]
            cookies = [v for k, v in (await response.json())["headers"] if k.lower() == "cookie"]
        assert cookies == [f"theme=dark; lang=en; {key}"]


async def test_no_service_for_host_is_404(upstreams, proxy) -> None:
    v1 = await upstreams("v1")
    worker = await proxy({"s": {"hosts": ["shop.example.com"], "versions": {"v1": [v1.address]}, "version": "v1"}})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{worker.port}/", headers={"Host": "other.example.com"}) as r:
            assert r.status == 404
        async with session.get(f"http://127.0.0.1:{worker.port}/", headers={"Host": "SHOP.example.com:80"}) as r:
            assert r.status == 200
    assert len(v1.seen) == 1
