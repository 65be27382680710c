"""Turnout's configuration model: the frozen, validated records every part of Turnout reads.

``reader`` builds them from YAML (or from a document merged with admin changes) and checks everything
once; later code trusts the model and never re-reads a file. The reference for every field is
``docs/configuration.md``; keep the two in step.

Pure: records only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .flagconfig import Flag

__all__ = [
    "AccessLog",
    "Admin",
    "Certificate",
    "Condition",
    "Config",
    "DemoApp",
    "Endpoint",
    "HealthCheck",
    "Limits",
    "Listener",
    "Managed",
    "Match",
    "Outlier",
    "Retries",
    "Rule",
    "ServerTls",
    "Service",
    "Split",
    "Sticky",
    "UpstreamTls",
    "Version",
]


# ----------------------------------------------------------------------------------------------- model

ConditionKind = Literal["exact", "prefix", "regex", "present", "absent"]
StickyKind = Literal["none", "header", "cookie", "client_ip", "query"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: bool = False  # written as https://host:port

    def __str__(self) -> str:
        return f"https://{self.host}:{self.port}" if self.tls else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Condition:
    """One test on a string that may be missing: exact, prefix, regex (full match), present, absent."""

    kind: ConditionKind
    value: str = ""


@dataclass(frozen=True, slots=True)
class Match:
    """All conditions must hold. Header names are lower-case; methods upper-case."""

    headers: tuple[tuple[str, Condition], ...] = ()
    cookies: tuple[tuple[str, Condition], ...] = ()
    query: tuple[tuple[str, Condition], ...] = ()
    path: Condition | None = None
    methods: frozenset[str] | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.headers or self.cookies or self.query or self.path or self.methods)


@dataclass(frozen=True, slots=True)
class Sticky:
    """Where a split reads the key that keeps a user on one version."""

    kind: StickyKind = "none"
    name: str = ""
    # Cookie stickiness only: give clients without the cookie a random key so they are sticky too.
    assign: bool = False
    max_age: int = 31_536_000


@dataclass(frozen=True, slots=True)
class Split:
    weights: tuple[tuple[str, int], ...]
    sticky: Sticky = Sticky()


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: Match
    version: str | None = None
    split: Split | None = None


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How a version's https:// endpoints are reached. Paths are absolute."""

    ca: str | None = None  # None: the system's CA bundle
    verify: bool = True
    server_name: str | None = None  # None: each endpoint's own host (SNI and hostname check)
    cert: str | None = None  # client certificate for mTLS
    key: str | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active checks of each endpoint of a version: GET ``path`` every ``interval``."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0
    healthy: int = 2  # consecutive passes to take an endpoint back
    unhealthy: int = 3  # consecutive failures to take it out


@dataclass(frozen=True, slots=True)
class Outlier:
    """Passive ejection: endpoints that keep failing real requests are left out for a while."""

    consecutive_failures: int = 5  # connect failures or 5xx answers in a row
    base_ejection: float = 30.0  # the first ejection; the n-th lasts n times as long
    min_healthy_percent: int = 50  # ejection never leaves fewer healthy endpoints (and never none)
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int = 1  # retries after the first try, each on another endpoint of the same version
    on_status: frozenset[int] = frozenset()  # statuses that retry idempotent requests without a body
    budget_percent: int = 20  # retries in flight: at most this share of the requests in flight (or 3)


@dataclass(frozen=True, slots=True)
class Version:
    name: str
    endpoints: tuple[Endpoint, ...]
    tls: UpstreamTls = UpstreamTls()
    health: HealthCheck | None = None
    draining: frozenset[Endpoint] = frozenset()  # listed endpoints that take no new requests


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    hosts: tuple[str, ...]
    path_prefix: str
    salt: str
    versions: tuple[Version, ...]
    rules: tuple[Rule, ...]
    outlier: Outlier = Outlier()
    retries: Retries = Retries()
    inject_flags: InjectFlags | None = None


@dataclass(frozen=True, slots=True)
class InjectFlags:
    """Evaluated flags added to the upstream request as one header: ``key=variant, key=variant``."""

    header: str  # lower-case
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    max_header_bytes: int = 32_768
    max_header_count: int = 100  # header fields per request (HAProxy: 101)
    max_connections: int = 10_000
    max_connections_per_client: int = 1024  # per client address and worker process
    min_body_rate: int = 512  # bytes/s a request body must average after its first body_idle_timeout (0: off)
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_connections_per_endpoint: int = 1024
    max_idle_per_endpoint: int = 128
    upstream_idle_timeout: float = 60.0
    shutdown_grace: float = 0.5
    drain_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: str  # absolute path of a PEM certificate (chain)
    key: str  # absolute path of its PEM private key
    names: tuple[str, ...] = ()  # SNI names it serves; empty: the names in the certificate


@dataclass(frozen=True, slots=True)
class ServerTls:
    certificates: tuple[Certificate, ...]  # the first one is the default (no SNI, or no match)


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: Endpoint
    tls: ServerTls | None = None
    redirect_https: int | None = None  # answer every request with a 308 to https on this port

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin API listener. Every route needs ``Authorization: Bearer <token>``."""

    listen: Endpoint
    token_file: str  # absolute; created with a random token if missing (unless token_env is used)
    token_env: str | None = None  # read the token from this environment variable instead
    flags_token_env: str | None = None  # a read-only token for apps: OFREP evaluation only


@dataclass(frozen=True, slots=True)
class Managed:
    """A proxy that takes its services and flags from a controller (its file has neither)."""

    url: str  # the controller's base URL, http://host:port
    token_file: str | None  # absolute; the controller's token
    token_env: str | None
    id: str  # how the controller lists this proxy


@dataclass(frozen=True, slots=True)
class AccessLog:
    path: str  # absolute, or "-" for standard error
    buffer_bytes: int = 65_536
    flush_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class DemoApp:
    version: str
    listen: Endpoint
    fail_percent: int = 0  # answers 500 to this share of requests (a bad release to roll back)


@dataclass(frozen=True, slots=True)
class Providers:
    """Where endpoints are discovered besides the file: a Docker engine's labelled containers."""

    docker: str | None = None  # the engine's endpoint: unix:///var/run/docker.sock, tcp://127.0.0.1:2375


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    listeners: tuple[Listener, ...]
    limits: Limits
    services: tuple[Service, ...]
    demo: tuple[DemoApp, ...] = field(default=())
    admin: Admin | None = None
    access_log: AccessLog | None = None
    flags: tuple[Flag, ...] = ()
    controller: Managed | None = None
    providers: Providers = field(default_factory=Providers)
