"""Reading a configuration: YAML text or plain data in, one validated ``model.Config`` out.

Every error names the file and the field path and says what is allowed, for example
``config/turnout.yaml: services.shop.rules[1].split.v3: unknown version 'v3' (versions: v1, v2)``.
``Reader`` is public so that other parts of the config (flags, and the controller's own section) walk
their fields the same way and report errors the same way.

Pure: text and documents in, records out. Certificate files are only named here; the shell reads them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import yaml

from .errors import ConfigError
from .flagconfig import parse_flags
from .model import (
    AccessLog,
    Admin,
    Certificate,
    Condition,
    ConditionKind,
    Config,
    DemoApp,
    Endpoint,
    HealthCheck,
    InjectFlags,
    Limits,
    Listener,
    Managed,
    Match,
    Outlier,
    Providers,
    Retries,
    Rule,
    ServerTls,
    Service,
    Split,
    Sticky,
    StickyKind,
    UpstreamTls,
    Version,
)
from .regex import RegexError, compile_pattern

__all__ = ["Reader", "from_document", "is_loopback", "parse", "read_document"]


def parse(text: str, source: str = "<config>") -> Config:
    """Validate config text. Relative file paths in it are taken from the directory of ``source``.
    Certificate files are only named here; ``load`` (or ``tls.check``) reads them."""
    return from_document(read_document(text, source), source)


def read_document(text: str, source: str) -> Any:
    """YAML text -> the plain data it holds (not validated yet)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
        reason = f": {problem}" + (f" ({context})" if context else "") if problem else ""
        raise ConfigError(source, "", f"not valid YAML{where}{reason}") from None


def from_document(raw: Any, source: str = "<config>", services_required: bool = True) -> Config:
    """Validate a config already read into plain data (a YAML file, or a file merged with admin changes).
    ``services_required``: False where services may all come from discovery (a controller's)."""
    parser = Reader(source)
    parser.unicode(raw, "")
    return parser.config(raw, services_required)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token: header and cookie names
_HOST = re.compile(r"^(\*|(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)$")
_MAX_WEIGHT_TOTAL = 1_000_000_000


class Reader:
    """Walks the raw YAML tree keeping the field path, so that errors can name it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.base = Path(source).parent if not source.startswith("<") else Path.cwd()

    def fail(self, path: str, message: str) -> ConfigError:
        return ConfigError(self.source, path, message)

    # -- generic readers

    def unicode(self, value: Any, path: str) -> None:
        """Every string must be encodable: YAML's and JSON's "\\ud800" escapes make lone surrogates, which
        would fail later, far from the field, when a salt is hashed or a header is written."""
        if isinstance(value, dict):
            for key, item in value.items():
                self.unicode(key, path)
                self.unicode(item, _join(path, str(key)))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.unicode(item, f"{path}[{i}]")
        elif isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise self.fail(path, f"{value!r} is not valid Unicode (a lone surrogate)") from None

    def mapping(self, value: Any, path: str, allowed: set[str] | None = None) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                hint = " (YAML reads on/off/yes/no as booleans: quote them)" if isinstance(key, bool) else ""
                raise self.fail(path, f"keys must be strings, got {key!r}{hint}")
            if allowed is not None and key not in allowed:
                raise self.fail(_join(path, key), f"unknown field (allowed: {', '.join(sorted(allowed))})")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"must be a non-empty string, got {_kind(value)}")
        return value

    def integer(self, value: Any, path: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"must be an integer {low}..{high}, got {_kind(value)}")
        if not low <= value <= high:
            raise self.fail(path, f"must be {low}..{high}, got {value}")
        return value

    def duration(self, value: Any, path: str) -> float:
        """Seconds as a number, or a string with a unit: 250ms, 10s, 5m, 1h."""
        if isinstance(value, bool):
            raise self.fail(path, "must be a duration such as 10, 10s or 250ms")
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            found = _DURATION.match(value) if isinstance(value, str) else None
            if found is None:
                raise self.fail(path, f"must be a duration such as 10, 10s or 250ms, got {value!r}")
            seconds = float(found.group(1)) * _UNIT[found.group(2)]
        if not 0 < seconds <= 86_400:
            raise self.fail(path, f"must be more than 0 and at most one day, got {value!r}")
        return seconds

    def endpoint(self, value: Any, path: str, schemes: bool = False) -> Endpoint:
        if not isinstance(value, str):
            raise self.fail(path, f"must be host:port, got {_kind(value)}")
        text = value
        tls = False
        if schemes and "://" in text:
            scheme, _, text = text.partition("://")
            if scheme not in ("http", "https"):
                raise self.fail(path, f"scheme must be http or https, got {scheme!r}")
            tls = scheme == "https"
        host, sep, port = text.rpartition(":")
        if sep and not host and not schemes:
            host = "0.0.0.0"  # a listen address ":8080": every interface, as Traefik and Go write it
        if not sep or not host or not port.isdigit():
            raise self.fail(path, f"must be host:port, got {text!r}")
        number = int(port)
        if not 0 <= number <= 65535:
            raise self.fail(path, f"port must be 0..65535, got {number}")
        return Endpoint(host.strip("[]"), number, tls)

    def file(self, value: Any, path: str) -> str:
        """A file path, made absolute against the config file's directory."""
        text = self.string(value, path)
        return str((self.base / text).resolve())

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {_kind(value)}")
        return value

    def name(self, value: Any, path: str, what: str) -> str:
        text = self.string(value, path)
        if not _NAME.match(text):
            raise self.fail(path, f"{what} {text!r} must be 1-63 letters, digits, '_', '.' or '-'")
        return text

    # -- the document

    def config(self, raw: Any, services_required: bool = True) -> Config:
        top = self.mapping(raw, "", {"listen", "listeners", "limits", "services", "demo", "admin", "access_log",
                                     "flags", "controller", "providers"})
        listeners = self.listeners(top)
        limits = self.limits(top.get("limits"), "limits")
        controller = self.managed(top["controller"], "controller", listeners) if "controller" in top else None
        providers = self.providers(top.get("providers"), "providers")
        if providers.docker is not None and controller is not None:
            raise self.fail("providers", "a managed proxy's containers are discovered by its controller: move "
                            "providers to the controller's config")
        services_raw = self.mapping(top.get("services"), "services")
        if not services_raw and controller is None and providers.docker is None and services_required:
            raise self.fail("services", "at least one service is required (or a provider that discovers them)")
        services = tuple(
            self.service(name, value, _join("services", name)) for name, value in services_raw.items()
        )
        self.check_unique_routes(services)
        demo = self.demo(top.get("demo"), "demo")
        admin = self.admin(top["admin"], "admin") if "admin" in top else None
        access_log = self.access_log(top["access_log"], "access_log") if "access_log" in top else None
        flags = parse_flags(self, top.get("flags"), "flags")
        known = {flag.key for flag in flags}
        for service in services:
            if service.inject_flags is not None:
                for i, key in enumerate(service.inject_flags.flags):
                    if key not in known:
                        raise self.fail(f"services.{service.name}.inject_flags.flags[{i}]",
                                        f"unknown flag {key!r} (flags: {', '.join(sorted(known)) or 'none'})")
        return Config(self.source, listeners, limits, services, demo, admin, access_log, flags, controller,
                      providers)

    def providers(self, raw: Any, path: str) -> Providers:
        body = self.mapping(raw, path, {"docker"})
        if "docker" not in body:
            return Providers()
        docker = self.mapping(body["docker"], _join(path, "docker"), {"endpoint"})
        endpoint = docker.get("endpoint", "unix:///var/run/docker.sock")
        if not isinstance(endpoint, str) or not re.match(r"^(unix:///.+|tcp://[^/]+:\d+)$", endpoint):
            raise self.fail(_join(path, "docker.endpoint"), "must be unix:///path/to/docker.sock or "
                            f"tcp://host:port, got {endpoint!r}")
        return Providers(endpoint)

    def managed(self, raw: Any, path: str, listeners: tuple[Listener, ...]) -> Managed:
        body = self.mapping(raw, path, {"url", "token_file", "token_env", "id"})
        url = self.string(body.get("url"), _join(path, "url")).rstrip("/")
        if not re.match(r"^https?://[^/?#]+$", url):
            raise self.fail(_join(path, "url"), f"must be http://host:port, got {url!r}")
        if "token_file" in body and "token_env" in body:
            raise self.fail(path, "give either token_file or token_env")
        if "token_file" not in body and "token_env" not in body:
            raise self.fail(path, "name the controller's token: token_file or token_env")
        default_id = f"{os.uname().nodename}:{listeners[0].address.port}"
        return Managed(
            url,
            self.file(body["token_file"], _join(path, "token_file")) if "token_file" in body else None,
            self.string(body["token_env"], _join(path, "token_env")) if "token_env" in body else None,
            self.name(body.get("id", default_id), _join(path, "id"), "proxy id") if "id" in body else default_id,
        )

    def access_log(self, raw: Any, path: str) -> AccessLog:
        body = self.mapping(raw, path, {"path", "buffer_bytes", "flush_interval"})
        target = self.string(body.get("path"), _join(path, "path"))
        return AccessLog(
            target if target == "-" else self.file(target, _join(path, "path")),
            self.integer(body.get("buffer_bytes", 65_536), _join(path, "buffer_bytes"), 0, 1 << 26),
            self.duration(body.get("flush_interval", 1.0), _join(path, "flush_interval")),
        )

    def admin(self, raw: Any, path: str) -> Admin:
        body = self.mapping(raw, path, {"listen", "token_file", "token_env", "flags_token_env"})
        listen = self.endpoint(body.get("listen", "127.0.0.1:9901"), _join(path, "listen"))
        if "token_file" in body and "token_env" in body:
            raise self.fail(path, "give either token_file or token_env")
        token_env = self.string(body["token_env"], _join(path, "token_env")) if "token_env" in body else None
        token_file = self.file(body.get("token_file", "admin.token"), _join(path, "token_file"))
        explicit = "token_file" in body or "token_env" in body
        if not explicit and not is_loopback(listen.host):
            raise self.fail(_join(path, "listen"), f"{listen} is not a loopback address: set token_file or "
                            "token_env so that the token is chosen, not generated")
        flags_env = self.string(body["flags_token_env"], _join(path, "flags_token_env")) \
            if "flags_token_env" in body else None
        return Admin(listen, token_file, token_env, flags_env)

    def listeners(self, top: Mapping[str, Any]) -> tuple[Listener, ...]:
        if "listen" in top and "listeners" in top:
            raise self.fail("listeners", "give either 'listen' (one plain listener) or 'listeners'")
        if "listeners" not in top:
            return (Listener("http", self.endpoint(top.get("listen", "127.0.0.1:8080"), "listen")),)
        raw = top["listeners"]
        if not isinstance(raw, list) or not raw:
            raise self.fail("listeners", "must be a non-empty list of listeners")
        listeners = []
        for i, item in enumerate(raw):
            where = f"listeners[{i}]"
            body = self.mapping(item, where, {"name", "listen", "tls", "redirect_https"})
            name = self.name(body.get("name", f"listener-{i}"), _join(where, "name"), "listener name")
            address = self.endpoint(body.get("listen"), _join(where, "listen"))
            tls = self.server_tls(body["tls"], _join(where, "tls")) if "tls" in body else None
            redirect = None
            if "redirect_https" in body:
                if tls is not None:
                    raise self.fail(_join(where, "redirect_https"), "a TLS listener cannot redirect to itself")
                redirect = self.integer(body["redirect_https"], _join(where, "redirect_https"), 1, 65535)
            listeners.append(Listener(name, address, tls, redirect))
        for i, listener in enumerate(listeners):
            for other in listeners[:i]:
                if listener.name == other.name:
                    raise self.fail(f"listeners[{i}].name", f"duplicate listener name {listener.name!r}")
                if listener.address == other.address and listener.address.port != 0:
                    raise self.fail(f"listeners[{i}].listen", f"{listener.address} is already used by {other.name!r}")
        return tuple(listeners)

    def server_tls(self, raw: Any, path: str) -> ServerTls:
        body = self.mapping(raw, path, {"certificates"})
        items = body.get("certificates")
        if not isinstance(items, list) or not items:
            raise self.fail(_join(path, "certificates"), "must be a non-empty list of {cert, key, names}")
        certificates = []
        for i, item in enumerate(items):
            where = f"{path}.certificates[{i}]"
            entry = self.mapping(item, where, {"cert", "key", "names"})
            names: tuple[str, ...] = ()
            if "names" in entry:
                names = self.hosts(entry["names"], _join(where, "names"))
            certificates.append(Certificate(
                self.file(entry.get("cert"), _join(where, "cert")),
                self.file(entry.get("key"), _join(where, "key")),
                names,
            ))
        return ServerTls(tuple(certificates))

    def upstream_tls(self, raw: Any, path: str) -> UpstreamTls:
        body = self.mapping(raw, path, {"ca", "verify", "server_name", "cert", "key"})
        if ("cert" in body) != ("key" in body):
            raise self.fail(path, "a client certificate needs both 'cert' and 'key'")
        return UpstreamTls(
            ca=self.file(body["ca"], _join(path, "ca")) if "ca" in body else None,
            verify=self.boolean(body.get("verify", True), _join(path, "verify")),
            server_name=self.string(body["server_name"], _join(path, "server_name")) if "server_name" in body
            else None,
            cert=self.file(body["cert"], _join(path, "cert")) if "cert" in body else None,
            key=self.file(body["key"], _join(path, "key")) if "key" in body else None,
        )

    def limits(self, raw: Any, path: str) -> Limits:
        defaults = Limits()
        fields = {each.name for each in dataclasses.fields(Limits)}
        given = self.mapping(raw, path, fields)
        values: dict[str, Any] = {}
        for key, value in given.items():
            current = getattr(defaults, key)
            if isinstance(current, float):
                values[key] = self.duration(value, _join(path, key))
            else:
                values[key] = self.integer(value, _join(path, key), 0 if key == "min_body_rate" else 1, 1 << 30)
        return Limits(**values)

    def demo(self, raw: Any, path: str) -> tuple[DemoApp, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.fail(path, f"must be a list of {{version, listen}}, got {_kind(raw)}")
        apps = []
        for i, item in enumerate(raw):
            where = f"{path}[{i}]"
            entry = self.mapping(item, where, {"version", "listen", "fail_percent"})
            version = self.name(entry.get("version"), _join(where, "version"), "version")
            fail = self.integer(entry.get("fail_percent", 0), _join(where, "fail_percent"), 0, 100)
            apps.append(DemoApp(version, self.endpoint(entry.get("listen"), _join(where, "listen")), fail))
        return tuple(apps)

    def service(self, name: str, raw: Any, path: str) -> Service:
        self.name(name, path, "service name")
        fields = {"hosts", "path_prefix", "salt", "versions", "rules", "split", "sticky", "version", "outlier",
                  "retries", "inject_flags"}
        body = self.mapping(raw, path, fields)
        hosts = self.hosts(body.get("hosts", ["*"]), _join(path, "hosts"))
        prefix = body.get("path_prefix", "/")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise self.fail(_join(path, "path_prefix"), f"must start with '/', got {prefix!r}")
        salt = body.get("salt", name)
        if not isinstance(salt, str):
            raise self.fail(_join(path, "salt"), f"must be a string, got {_kind(salt)}")
        versions = self.versions(body.get("versions"), _join(path, "versions"))
        names = [v.name for v in versions]
        if "rules" in body:
            for shorthand in ("split", "sticky", "version"):
                if shorthand in body:
                    raise self.fail(_join(path, shorthand), "give either 'rules' or a service-level route")
            rules_raw = body["rules"]
            if not isinstance(rules_raw, list) or not rules_raw:
                raise self.fail(_join(path, "rules"), "must be a non-empty list of rules")
            rules = tuple(
                self.rule(item, f"{path}.rules[{i}]", names, i, i == len(rules_raw) - 1)
                for i, item in enumerate(rules_raw)
            )
            seen: set[str] = set()
            for i, rule in enumerate(rules):
                if rule.name in seen:
                    raise self.fail(f"{path}.rules[{i}].name", f"duplicate rule name {rule.name!r}")
                seen.add(rule.name)
        else:
            route = {k: body[k] for k in ("split", "sticky", "version") if k in body}
            if not route:
                raise self.fail(path, "needs 'rules', or a 'split' or 'version' to route to")
            rules = (self.rule({"name": "default", **route}, path, names, 0, True),)
        outlier = self.outlier(body.get("outlier"), _join(path, "outlier"))
        retries = self.retries(body.get("retries"), _join(path, "retries"))
        inject = self.inject_flags(body["inject_flags"], _join(path, "inject_flags")) if "inject_flags" in body \
            else None
        return Service(name, hosts, prefix, salt, versions, rules, outlier, retries, inject)

    def inject_flags(self, raw: Any, path: str) -> InjectFlags:
        body = self.mapping(raw, path, {"header", "flags"})
        header = self.string(body.get("header", "x-turnout-flags"), _join(path, "header"))
        if not _TOKEN.match(header):
            raise self.fail(_join(path, "header"), f"{header!r} is not a valid header name")
        keys = body.get("flags")
        if not isinstance(keys, list) or not keys:
            raise self.fail(_join(path, "flags"), "must be a non-empty list of flag keys")
        return InjectFlags(header.lower(), tuple(self.string(k, f"{path}.flags[{i}]") for i, k in enumerate(keys)))

    def outlier(self, raw: Any, path: str) -> Outlier:
        body = self.mapping(raw, path, {"consecutive_failures", "base_ejection", "min_healthy_percent", "enabled"})
        default = Outlier()
        return Outlier(
            self.integer(body.get("consecutive_failures", default.consecutive_failures),
                         _join(path, "consecutive_failures"), 1, 1000),
            self.duration(body.get("base_ejection", default.base_ejection), _join(path, "base_ejection")),
            self.integer(body.get("min_healthy_percent", default.min_healthy_percent),
                         _join(path, "min_healthy_percent"), 0, 100),
            self.boolean(body.get("enabled", True), _join(path, "enabled")),
        )

    def retries(self, raw: Any, path: str) -> Retries:
        body = self.mapping(raw, path, {"attempts", "on_status", "budget_percent"})
        default = Retries()
        statuses = body.get("on_status", [])
        if not isinstance(statuses, list):
            raise self.fail(_join(path, "on_status"), "must be a list of 5xx statuses")
        on_status = frozenset(self.integer(code, f"{path}.on_status[{i}]", 500, 599) for i, code in enumerate(statuses))
        return Retries(
            self.integer(body.get("attempts", default.attempts), _join(path, "attempts"), 0, 5),
            on_status,
            self.integer(body.get("budget_percent", default.budget_percent), _join(path, "budget_percent"), 0, 100),
        )

    def health(self, raw: Any, path: str) -> HealthCheck:
        body = self.mapping(raw, path, {"path", "interval", "timeout", "healthy", "unhealthy"})
        default = HealthCheck()
        check_path = body.get("path", default.path)
        if not isinstance(check_path, str) or not check_path.startswith("/"):
            raise self.fail(_join(path, "path"), f"must start with '/', got {check_path!r}")
        return HealthCheck(
            check_path,
            self.duration(body.get("interval", default.interval), _join(path, "interval")),
            self.duration(body.get("timeout", default.timeout), _join(path, "timeout")),
            self.integer(body.get("healthy", default.healthy), _join(path, "healthy"), 1, 100),
            self.integer(body.get("unhealthy", default.unhealthy), _join(path, "unhealthy"), 1, 100),
        )

    def hosts(self, raw: Any, path: str) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise self.fail(path, "must be a host or a non-empty list of hosts")
        hosts = []
        for i, item in enumerate(raw):
            host = self.string(item, f"{path}[{i}]").lower()
            if not _HOST.match(host):
                raise self.fail(f"{path}[{i}]", f"{item!r} is not a host name, '*.domain' or '*'")
            hosts.append(host)
        return tuple(hosts)

    def versions(self, raw: Any, path: str) -> tuple[Version, ...]:
        body = self.mapping(raw, path)
        if not body:
            raise self.fail(path, "at least one version is required")
        if len(body) > 255:
            raise self.fail(path, "at most 255 versions")
        versions = []
        for name, value in body.items():
            where = _join(path, name)
            self.name(name, where, "version name")
            if isinstance(value, list):
                value = {"endpoints": value}
            entry = self.mapping(value, where, {"endpoints", "tls", "health", "draining"})
            endpoints_raw = entry.get("endpoints")
            if not isinstance(endpoints_raw, list):
                raise self.fail(_join(where, "endpoints"), "must be a list of host:port or https://host:port")
            endpoints = tuple(
                self.endpoint(item, f"{where}.endpoints[{i}]", schemes=True) for i, item in enumerate(endpoints_raw)
            )
            tls = self.upstream_tls(entry["tls"], _join(where, "tls")) if "tls" in entry else UpstreamTls()
            health = self.health(entry["health"], _join(where, "health")) if "health" in entry else None
            draining_raw = entry.get("draining", [])
            if not isinstance(draining_raw, list):
                raise self.fail(_join(where, "draining"), "must be a list of endpoints of this version")
            draining = set()
            for i, item in enumerate(draining_raw):
                endpoint = self.endpoint(item, f"{where}.draining[{i}]", schemes=True)
                if endpoint not in endpoints:
                    raise self.fail(f"{where}.draining[{i}]", f"{item!r} is not an endpoint of this version")
                draining.add(endpoint)
            versions.append(Version(name, endpoints, tls, health, frozenset(draining)))
        return tuple(versions)

    def rule(self, raw: Any, path: str, versions: list[str], index: int, last: bool) -> Rule:
        body = self.mapping(raw, path, {"name", "match", "version", "split", "sticky"})
        name = self.name(body.get("name", "default" if last else f"rule-{index}"), _join(path, "name"), "rule")
        match = self.match(body.get("match"), _join(path, "match"))
        if last and not match.is_empty:
            raise self.fail(_join(path, "match"), "the last rule is the default and must not have a match")
        if not last and match.is_empty:
            raise self.fail(_join(path, "match"), "only the last rule may match every request")
        if ("version" in body) == ("split" in body):
            raise self.fail(path, "needs exactly one destination: 'version' or 'split'")
        if "version" in body:
            if "sticky" in body:
                raise self.fail(_join(path, "sticky"), "stickiness needs a 'split'")
            target = self.string(body["version"], _join(path, "version"))
            if target not in versions:
                raise self.fail(_join(path, "version"), _unknown_version(target, versions))
            return Rule(name, match, version=target)
        split = self.split(body["split"], body.get("sticky"), path, versions)
        return Rule(name, match, split=split)

    def split(self, raw: Any, sticky_raw: Any, path: str, versions: list[str]) -> Split:
        where = _join(path, "split")
        body = self.mapping(raw, where)
        if not body:
            raise self.fail(where, "must give a weight to at least one version")
        weights = []
        for name, value in body.items():
            if name not in versions:
                raise self.fail(_join(where, name), _unknown_version(name, versions))
            weights.append((name, self.integer(value, _join(where, name), 0, _MAX_WEIGHT_TOTAL)))
        total = sum(w for _, w in weights)
        if total <= 0:
            raise self.fail(where, "at least one weight must be more than 0")
        if total > _MAX_WEIGHT_TOTAL:
            raise self.fail(where, f"weights must add up to at most {_MAX_WEIGHT_TOTAL}, got {total}")
        return Split(tuple(weights), self.sticky(sticky_raw, _join(path, "sticky")))

    def sticky(self, raw: Any, path: str) -> Sticky:
        if raw is None or raw == "none":
            return Sticky()
        if raw == "client_ip":
            return Sticky("client_ip")
        body = self.mapping(raw, path, {"header", "cookie", "query", "client_ip", "assign", "max_age"})
        kinds = [k for k in ("header", "cookie", "query", "client_ip") if k in body]
        if len(kinds) != 1:
            raise self.fail(path, "give exactly one of header, cookie, query or client_ip")
        kind = cast(StickyKind, kinds[0])
        assign = body.get("assign", False)
        if not isinstance(assign, bool):
            raise self.fail(_join(path, "assign"), "must be true or false")
        if assign and kind != "cookie":
            raise self.fail(_join(path, "assign"), "only cookie stickiness can assign keys")
        max_age = self.integer(body.get("max_age", 31_536_000), _join(path, "max_age"), 1, 1 << 31)
        if kind == "client_ip":
            if body["client_ip"] is not True:
                raise self.fail(_join(path, "client_ip"), "must be true")
            return Sticky("client_ip")
        name = self.string(body[kind], _join(path, kind))
        if kind != "query" and not _TOKEN.match(name):
            raise self.fail(_join(path, kind), f"{name!r} is not a valid {kind} name")
        return Sticky(kind, name.lower() if kind == "header" else name, assign, max_age)

    def match(self, raw: Any, path: str) -> Match:
        body = self.mapping(raw, path, {"headers", "cookies", "query", "path", "method"})
        headers = self.conditions(body.get("headers"), _join(path, "headers"), lower=True)
        cookies = self.conditions(body.get("cookies"), _join(path, "cookies"), lower=False)
        query = self.conditions(body.get("query"), _join(path, "query"), lower=False)
        path_cond = None
        if "path" in body:
            path_cond = self.condition(body["path"], _join(path, "path"))
            if path_cond.kind in ("present", "absent"):
                raise self.fail(_join(path, "path"), "use exact, prefix or regex for a path")
        methods = None
        if "method" in body:
            raw_methods = body["method"]
            items = [raw_methods] if isinstance(raw_methods, str) else raw_methods
            if not isinstance(items, list) or not items:
                raise self.fail(_join(path, "method"), "must be a method or a list of methods")
            methods = frozenset(
                self.string(m, f"{path}.method[{i}]").upper() for i, m in enumerate(items)
            )
        return Match(headers, cookies, query, path_cond, methods)

    def conditions(self, raw: Any, path: str, lower: bool) -> tuple[tuple[str, Condition], ...]:
        body = self.mapping(raw, path)
        return tuple(
            (key.lower() if lower else key, self.condition(value, _join(path, key)))
            for key, value in body.items()
        )

    def condition(self, raw: Any, path: str) -> Condition:
        if isinstance(raw, str):
            return Condition("exact", raw)
        body = self.mapping(raw, path, {"exact", "prefix", "regex", "present", "absent"})
        if len(body) != 1:
            raise self.fail(path, "give exactly one of exact, prefix, regex, present or absent")
        ((name, value),) = body.items()
        kind = cast(ConditionKind, name)  # the mapping check above allowed only these names
        if kind in ("present", "absent"):
            if value is not True:
                raise self.fail(_join(path, kind), "must be true")
            return Condition(kind)
        if not isinstance(value, str):
            raise self.fail(_join(path, kind), f"must be a string, got {_kind(value)}")
        if kind == "regex":
            try:
                compile_pattern(value)
            except RegexError as exc:
                raise self.fail(_join(path, kind), f"bad regular expression: {exc}") from None
        return Condition(kind, value)

    def check_unique_routes(self, services: tuple[Service, ...]) -> None:
        seen: dict[tuple[str, str], str] = {}
        for service in services:
            for host in service.hosts:
                key = (host, service.path_prefix)
                if key in seen:
                    raise self.fail(
                        _join("services", service.name),
                        f"host {host!r} with path_prefix {service.path_prefix!r} is already served by "
                        f"service {seen[key]!r}",
                    )
                seen[key] = service.name


def is_loopback(host: str) -> bool:
    """Only a name that is loopback by definition, or a loopback address ("127.example.com" is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return type(value).__name__ if not isinstance(value, str) else repr(value)


def _unknown_version(name: str, versions: list[str]) -> str:
    return f"unknown version {name!r} (versions: {', '.join(versions)})"
