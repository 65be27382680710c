"""The routing state: a compiled, immutable snapshot of the config, and the per-request decision.

Rule 1: nothing here does I/O, reads the clock or draws randomness by itself. Randomness (weighted
random splits, fresh sticky keys) comes in through the ``draw`` argument, so every decision can be
replayed in a test.

Everything a request needs is computed once per snapshot: host lookup tables, compiled predicates,
bucket tables as ``bytes`` (bucket -> version index), cumulative weights. Per request the work is a
dict lookup for the host, a short scan of path prefixes, the rule predicates in order (a cheap miss
for rules that do not apply) and, for a sticky split, one hash and one index.

Bucket tables are *planned* once by the writer of the routing state (``plan``: rebalanced from the
previous generation's, never rebuilt; see ``buckets``) and shipped with the snapshot; every receiver
``build``s with exactly those tables, so all processes make the same sticky choice. Snapshots are
swapped in by a single assignment in the I/O shell; requests in flight keep the objects they hold.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from itertools import accumulate
from typing import Final

from . import buckets
from .flags import FlagSet, Injection
from .hashing import Bucketer
from .match import Predicate, Request, compile_match
from .model import Config, Endpoint, Outlier, Retries, Rule, Service, Split, Sticky, Version

__all__ = ["Decision", "RoutingState", "Target", "build", "normalise_host", "plan", "wanted"]


class Target:
    """One upstream endpoint; ``address`` keys the shell's connection pools. A TLS endpoint's key also
    names its version, whose TLS settings (CA, client certificate, server name) the pool uses."""

    __slots__ = ("address", "host", "port", "tls")

    def __init__(self, host: str, port: int, tls: tuple[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.tls = tls  # (service, version) for https:// endpoints
        self.address = f"https://{host}:{port}/{tls[0]}/{tls[1]}" if tls else f"{host}:{port}"


_NO_OUTLIER, _NO_RETRIES = Outlier(), Retries()
FLAG_PREFIX: Final = "flag:"  # flag tables share the state file with split tables: keep the keys apart


class VersionRoute:
    """A version's endpoints in a snapshot, picked round-robin, with its service's failure policies."""

    __slots__ = ("_next", "addresses", "draining", "endpoints", "name", "outlier", "retries", "where")

    def __init__(self, name: str, endpoints: tuple[Target, ...],
                 outlier: Outlier = _NO_OUTLIER, retries: Retries = _NO_RETRIES,
                 draining: tuple[Target, ...] = (), service: str = "") -> None:
        self.name = name
        self.where = f"service {service} version {name}"  # for log lines about its endpoints
        self.endpoints = endpoints  # the ones that take new requests
        self.draining = draining  # still listed, finishing what they have, taking nothing new
        self.addresses = tuple(target.address for target in endpoints)
        self.outlier = outlier
        self.retries = retries
        self._next = 0

    def peek(self, avoid: AbstractSet[str] = frozenset()) -> Target | None:
        """The endpoint ``pick`` would return next, without moving on (for explain)."""
        count = len(self.endpoints)
        for step in range(count):
            target = self.endpoints[(self._next + step) % count]
            if target.address not in avoid:
                return target
        return None

    def pick(self, avoid: AbstractSet[str] = frozenset()) -> Target | None:
        """The next endpoint not in ``avoid`` (ejected, failing checks, already tried), or None: then
        the request is answered by the proxy, never sent to another version."""
        endpoints = self.endpoints
        count = len(endpoints)
        if not count:
            return None
        index = self._next % count
        if avoid:
            for step in range(count):
                target = endpoints[(index + step) % count]
                if target.address not in avoid:
                    self._next = index + step + 1
                    return target
            return None
        self._next = index + 1
        return endpoints[index]


class Decision:
    """Where one request goes and why. (A plain slotted class: built per request, so it must be cheap.)"""

    __slots__ = ("assigned_key", "bucket", "rule", "sticky", "version")

    def __init__(self, rule: str, version: VersionRoute, bucket: int | None,
                 assigned_key: str | None = None, sticky: Sticky | None = None) -> None:
        self.rule = rule
        self.version = version
        self.bucket = bucket  # None when the choice was not sticky
        self.assigned_key = assigned_key  # a fresh sticky key the response must set as a cookie
        self.sticky = sticky  # the stickiness that assigned it


class SplitRoute:
    __slots__ = ("bucketer", "buckets", "cumulative", "key", "owners", "sticky", "table", "total", "versions")

    def __init__(self, split: Split, versions: dict[str, VersionRoute], bucketer: Bucketer,
                 table: buckets.Table) -> None:
        live = [(name, w) for name, w in split.weights if w > 0]
        self.versions = tuple(versions[name] for name, _ in live)
        index = {name: i for i, (name, _) in enumerate(live)}
        self.buckets = table  # owners and acquisition order: what the next snapshot rebalances
        self.owners = table.owners
        self.table = bytes(index[owner] for owner in table.owners)
        self.cumulative = list(accumulate(w for _, w in live))
        self.total = self.cumulative[-1]
        self.sticky = split.sticky
        self.bucketer = bucketer
        self.key = _key_reader(split.sticky)

    def choose(self, request: Request, draw: Callable[[], int]) -> tuple[VersionRoute, int | None, str | None]:
        key = self.key(request)
        assigned = None
        if key is None and self.sticky.assign:
            key = assigned = f"{draw():016x}"
        if key is None:
            point = draw() % self.total
            return self.versions[bisect_right(self.cumulative, point)], None, None
        bucket = self.bucketer.bucket(key.encode())
        return self.versions[self.table[bucket]], bucket, assigned


class RuleRoute:
    __slots__ = ("name", "predicate", "split", "version")

    def __init__(self, name: str, predicate: Predicate | None, version: VersionRoute | None,
                 split: SplitRoute | None) -> None:
        self.name = name
        self.predicate = predicate
        self.version = version
        self.split = split


class ServiceRoute:
    __slots__ = ("config", "flag_key", "inject_header", "injection", "name", "rules", "versions")

    def __init__(self, config: Service, versions: dict[str, VersionRoute], rules: tuple[RuleRoute, ...]) -> None:
        self.config = config
        self.name = config.name
        self.versions = versions
        self.rules = rules
        # The targeting key for injected flags: the stickiness key of the service's default split, so
        # that "this user is on v2" and "this user has the flag" are decided on the same key.
        splits = [rule.split for rule in rules if rule.split is not None]
        self.flag_key = splits[-1].key if splits else None
        self.inject_header = config.inject_flags.header.encode() if config.inject_flags is not None else b""
        self.injection: Injection | None = None  # set with the snapshot's flags


    def decide(self, request: Request, draw: Callable[[], int]) -> Decision:
        for rule in self.rules:
            if rule.predicate is None or rule.predicate(request):
                if rule.version is not None:
                    return Decision(rule.name, rule.version, None)
                split = rule.split
                assert split is not None
                version, bucket, assigned = split.choose(request, draw)
                if assigned is None:
                    return Decision(rule.name, version, bucket)
                return Decision(rule.name, version, bucket, assigned, split.sticky)
        raise AssertionError("the last rule matches every request")  # guaranteed by config validation


class RoutingState:
    """One generation of routing. Immutable once built (endpoint round-robin counters aside)."""

    def __init__(self, config: Config, generation: int, services: tuple[ServiceRoute, ...],
                 flags: FlagSet) -> None:
        self.config = config
        self.generation = generation
        self.services = {s.name: s for s in services}
        self.flags = flags
        # host -> [(path_prefix, service)] longest prefix first; "*.suffix" keyed by ".suffix"; "*" by "".
        self._exact: dict[str, list[tuple[str, ServiceRoute]]] = {}
        self._wildcard: dict[str, list[tuple[str, ServiceRoute]]] = {}
        for service in services:
            for host in service.config.hosts:
                if host == "*":
                    table, key = self._wildcard, ""
                elif host.startswith("*."):
                    table, key = self._wildcard, host[1:]
                else:
                    table, key = self._exact, host
                table.setdefault(key, []).append((service.config.path_prefix, service))
        for table in (self._exact, self._wildcard):
            for entries in table.values():
                entries.sort(key=lambda entry: len(entry[0]), reverse=True)
        self._suffixes = any(key for key in self._wildcard)  # any "*.domain" at all?
        # The request headers any rule or split reads: the hot path decodes only these.
        self.header_names = frozenset(
            name.encode("latin-1") for service in config.services for name in _headers_read(service)
        )

    def find(self, host: str, path: str) -> ServiceRoute | None:
        """The service for a normalised host and a raw path: exact host, then the longest wildcard
        suffix, then the catch-all; within a host, the longest matching path prefix."""
        entries = self._exact.get(host)
        if entries is not None:
            found = _by_prefix(entries, path)
            if found is not None:
                return found
        if self._wildcard:
            dot = host.find(".") if self._suffixes else -1
            while dot != -1:
                entries = self._wildcard.get(host[dot:])
                if entries is not None:
                    found = _by_prefix(entries, path)
                    if found is not None:
                        return found
                dot = host.find(".", dot + 1)
            entries = self._wildcard.get("")
            if entries is not None:
                return _by_prefix(entries, path)
        return None

    def tables(self) -> dict[tuple[str, str], buckets.Table]:
        """Every bucket table: splits by (service, rule), flag rollouts by ("flag:" + key, part). What
        the next snapshot rebalances, what the state file keeps."""
        tables = {
            (service.name, rule.name): rule.split.buckets
            for service in self.services.values()
            for rule in service.rules
            if rule.split is not None
        }
        tables.update({(FLAG_PREFIX + key, part): table for (key, part), table in self.flags.tables().items()})
        return tables


def _headers_read(service: Service) -> set[str]:
    names = {"host"}
    for rule in service.rules:
        names.update(name for name, _ in rule.match.headers)
        if rule.match.cookies:
            names.add("cookie")
        if rule.split is not None and rule.split.sticky.kind == "header":
            names.add(rule.split.sticky.name)
        if rule.split is not None and rule.split.sticky.kind == "cookie":
            names.add("cookie")
    if service.inject_flags is not None:
        names.add(service.inject_flags.header)  # a client's own copy must be seen, to be dropped
    return names


def _key_reader(sticky: Sticky) -> Callable[[Request], str | None]:
    """Where a split's sticky key comes from; an empty value counts as no key."""
    name = sticky.name
    if sticky.kind == "header":
        return lambda r: r.headers.get(name) or None
    if sticky.kind == "cookie":
        return lambda r: r.cookies.get(name) or None
    if sticky.kind == "query":
        return lambda r: r.params.get(name) or None
    if sticky.kind == "client_ip":
        return lambda r: r.client_ip or None
    return lambda r: None


def _by_prefix(entries: list[tuple[str, ServiceRoute]], path: str) -> ServiceRoute | None:
    for prefix, service in entries:
        if path.startswith(prefix):
            return service
    return None


def normalise_host(value: str) -> str:
    """Host header -> lookup key: lower-case, without port or trailing dot ("[::1]:80" -> "[::1]")."""
    host = value.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    return host.rstrip(".")


# ----------------------------------------------------------------------------------------------- compile


def wanted(config: Config) -> dict[tuple[str, str], dict[str, int]]:
    """Every bucket table a config needs, with the weights it must serve: splits by (service, rule),
    flag rollouts by ("flag:" + key, part)."""
    need = {(service.name, rule.name): dict(rule.split.weights)
            for service in config.services for rule in service.rules if rule.split is not None}
    need.update({(FLAG_PREFIX + key, part): shares for (key, part), shares in FlagSet.wanted(config.flags).items()})
    return need


def plan(config: Config, previous: Mapping[tuple[str, str], buckets.Table]) -> buckets.Tables:
    """The writer's step: the tables of the next snapshot, rebalanced from the previous ones (``buckets``
    is the only rebalancer). Receivers never plan: they ``build`` with what the writer planned."""
    return buckets.plan(previous, wanted(config))


def build(config: Config, generation: int = 1, tables: Mapping[tuple[str, str], buckets.Table] | None = None
          ) -> RoutingState:
    """Compile a config into the snapshot ``generation`` with exactly ``tables`` (as planned by the
    writer: see ``plan``); ``buckets.TableError`` if they do not fit the config, and nothing is built.
    ``tables=None`` plans fresh ones, as a first writer would (tests, benchmarks, dry runs)."""
    if tables is None:
        tables = plan(config, {})
    buckets.check(tables, wanted(config))
    services = []
    for service in config.services:
        bucketer = Bucketer(service.salt)
        versions = {
            v.name: VersionRoute(
                v.name,
                tuple(_target(service, v, e) for e in v.endpoints if e not in v.draining),
                service.outlier, service.retries,
                tuple(_target(service, v, e) for e in v.endpoints if e in v.draining),
                service.name,
            )
            for v in service.versions
        }
        rules = tuple(
            _compile_rule(rule, versions, bucketer, tables.get((service.name, rule.name)))
            for rule in service.rules
        )
        services.append(ServiceRoute(service, versions, rules))
    flag_tables = {(key.removeprefix(FLAG_PREFIX), part): table for (key, part), table in tables.items()
                   if key.startswith(FLAG_PREFIX)}
    flags = FlagSet(config.flags, flag_tables)
    for route in services:
        if route.config.inject_flags is not None:
            route.injection = flags.injection(route.config.inject_flags.flags)
    return RoutingState(config, generation, tuple(services), flags)


def _target(service: Service, version: Version, endpoint: Endpoint) -> Target:
    return Target(endpoint.host, endpoint.port, (service.name, version.name) if endpoint.tls else None)


def _compile_rule(rule: Rule, versions: dict[str, VersionRoute], bucketer: Bucketer,
                  table: buckets.Table | None) -> RuleRoute:
    predicate = compile_match(rule.match)
    if rule.version is not None:
        return RuleRoute(rule.name, predicate, versions[rule.version], None)
    assert rule.split is not None and table is not None  # checked against ``wanted``
    return RuleRoute(rule.name, predicate, None, SplitRoute(rule.split, versions, bucketer, table))
