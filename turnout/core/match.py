"""The request match language: what a rule or a flag may look at (``Request``), and its compilation
into predicates (header, cookie, query, path, method; exact / prefix / regex / present / absent).

Compiled once per snapshot; per request a predicate is one or a few closure calls. Cookies and query
parameters are parsed only when a predicate asks for them.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl

from .model import Condition, Match
from .regex import compile_pattern

__all__ = ["Predicate", "Request", "compile_condition", "compile_match", "parse_cookies"]


class Request:
    """What routing may look at. Header names are lower-case; repeated headers are comma-joined.
    ``headers`` holds only the headers the snapshot reads (``RoutingState.header_names``)."""

    __slots__ = ("_cookies", "_params", "client_ip", "headers", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], client_ip: str) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.client_ip = client_ip
        self._cookies: dict[str, str] | None = None
        self._params: dict[str, str] | None = None

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get("cookie", ""))
        return self._cookies

    @property
    def params(self) -> dict[str, str]:
        if self._params is None:
            params: dict[str, str] = {}
            for key, value in parse_qsl(self.query, keep_blank_values=True):
                params.setdefault(key, value)  # the first occurrence wins, as in most frameworks
            self._params = params
        return self._params


def parse_cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header routes as if it had no cookies
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


Predicate = Callable[[Request], bool]


def compile_match(match: Match) -> Predicate | None:
    tests: list[Predicate] = []
    if match.methods is not None:
        methods = match.methods
        tests.append(lambda r: r.method in methods)
    if match.path is not None:
        path_test = compile_condition(match.path)
        tests.append(lambda r: path_test(r.path))
    for name, cond in match.headers:
        tests.append(_header_test(name, cond))
    for name, cond in match.cookies:
        tests.append(_field_test(_cookie(name), cond))
    for name, cond in match.query:
        tests.append(_field_test(_param(name), cond))
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return lambda r: all(test(r) for test in tests)


def _header_test(name: str, cond: Condition) -> Predicate:
    """Header conditions are the common case: one closure each, no nested calls."""
    value = cond.value
    if cond.kind == "exact":
        return lambda r: r.headers.get(name) == value
    if cond.kind == "present":
        return lambda r: name in r.headers
    if cond.kind == "absent":
        return lambda r: name not in r.headers
    test = compile_condition(cond)
    return lambda r: test(r.headers.get(name))


def _cookie(name: str) -> Callable[[Request], str | None]:
    return lambda r: r.cookies.get(name)


def _param(name: str) -> Callable[[Request], str | None]:
    return lambda r: r.params.get(name)


def _field_test(get: Callable[[Request], str | None], cond: Condition) -> Predicate:
    test = compile_condition(cond)
    return lambda r: test(get(r))


def compile_condition(cond: Condition) -> Callable[[str | None], bool]:
    value = cond.value
    if cond.kind == "exact":
        return lambda s: s == value
    if cond.kind == "prefix":
        return lambda s: s is not None and s.startswith(value)
    if cond.kind == "regex":
        pattern = compile_pattern(value)  # full match, as in Envoy and Gateway API; RE2: linear time
        return lambda s: s is not None and pattern.fullmatch(s) is not None
    if cond.kind == "present":
        return lambda s: s is not None
    return lambda s: s is None
