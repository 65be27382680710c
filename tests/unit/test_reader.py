"""Config validation: every error names the file and the field and says what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxy.config import load
from turnout.core.errors import ConfigError
from turnout.core.reader import parse

BASE = """
services:
  shop:
    versions: {v1: [127.0.0.1:9001], v2: [127.0.0.1:9002]}
    rules:
      - {name: beta, match: {headers: {x-beta: "1"}}, version: v2}
      - {name: default, split: {v1: 90, v2: 10}, sticky: {header: x-user}}
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, "conf.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("v2: 10}", "v3: 10}",
         "conf.yaml: services.shop.rules[1].split.v3: unknown version 'v3' (versions: v1, v2)"),
        ("v2: 10}", "v2: -1}",
         "conf.yaml: services.shop.rules[1].split.v2: must be 0..1000000000, got -1"),
        ("v1: 90, v2: 10", "v1: 0, v2: 0",
         "conf.yaml: services.shop.rules[1].split: at least one weight must be more than 0"),
        ('x-beta: "1"', "x-beta: {regex: '('}",
         "conf.yaml: services.shop.rules[0].match.headers.x-beta.regex: bad regular expression"),
        ('x-beta: "1"', 'x-beta: "\\ud800"',
         "conf.yaml: services.shop.rules[0].match.headers.x-beta: '\\ud800' is not valid Unicode (a lone surrogate)"),
        ("version: v2}", "version: v9}",
         "conf.yaml: services.shop.rules[0].version: unknown version 'v9'"),
        ("127.0.0.1:9001", "localhost",
         "conf.yaml: services.shop.versions.v1.endpoints[0]: must be host:port, got 'localhost'"),
        ("{header: x-user}", "{header: x-user, cookie: c}",
         "conf.yaml: services.shop.rules[1].sticky: give exactly one of header"),
        ("{header: x-user}", "{header: x-user, assign: true}",
         "only cookie stickiness can assign keys"),
        ("name: beta, match", "name: beta, matches",
         "services.shop.rules[0].matches: unknown field (allowed: match, name, split, sticky, version)"),
        ('{name: beta, match: {headers: {x-beta: "1"}}, version: v2}', "{name: beta, version: v2}",
         "services.shop.rules[0].match: only the last rule may match every request"),
        ("{name: default, split", "{name: default, match: {method: GET}, split",
         "the last rule is the default and must not have a match"),
    ],
)
def test_errors_name_file_and_field(old: str, new: str, message: str) -> None:
    assert old in BASE
    assert message in error_of(BASE.replace(old, new))


def test_other_errors() -> None:
    assert error_of("services: {}") == ("conf.yaml: services: at least one service is required (or a provider that "
                                        "discovers them)")
    assert error_of("services: [") == ("conf.yaml: not valid YAML at line 1, column 12: expected the node content, "
                                       "but found '<stream end>' (while parsing a flow node)")
    assert error_of("a: b: c\n") == "conf.yaml: not valid YAML at line 1, column 5: mapping values are not allowed here"
    assert "listen: must be host:port" in error_of("listen: 8080\n" + BASE)
    assert "limits.header_timeout: must be a duration" in error_of("limits: {header_timeout: soon}\n" + BASE)
    assert "limits.max_header_bytes: must be an integer" in error_of("limits: {max_header_bytes: 1.5}\n" + BASE)
    assert "services.x.hosts[0]: 'bad host!' is not a host name" in error_of(
        "services: {x: {hosts: ['bad host!'], versions: {v1: []}, version: v1}}")
    assert "is already served by service 'a'" in error_of(
        "services: {a: {versions: {v1: []}, version: v1}, b: {versions: {v1: []}, version: v1}}")


def test_durations_and_defaults() -> None:
    config = parse("limits: {header_timeout: 250ms, read_timeout: 2m, keepalive_timeout: 5}\n" + BASE)
    assert (config.limits.header_timeout, config.limits.read_timeout, config.limits.keepalive_timeout) == (0.25, 120, 5)
    assert config.limits.max_header_bytes == 32768
    assert [(x.name, x.address.port, x.tls) for x in config.listeners] == [("http", 8080, None)]


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read file"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["turnout.yaml", "container.yaml"])
def test_the_shipped_configs_are_valid(name: str) -> None:
    config = load(Path(__file__).parents[2] / "config" / name)
    assert [v.name for v in config.services[0].versions][:2] == ["v1", "v2"]


@pytest.mark.parametrize(("listen", "loopback"), [
    ("127.0.0.1:9901", True), ("127.8.9.1:9901", True), ("[::1]:9901", True), ("localhost:9901", True),
    ("127.example.com:9901", False), ("0.0.0.0:9901", False), ("10.0.0.1:9901", False)])
def test_only_a_real_loopback_admin_listener_may_generate_its_token(listen: str, loopback: bool) -> None:
    text = BASE + f"admin: {{listen: '{listen}'}}\n"
    if loopback:
        assert parse(text, "conf.yaml").admin is not None
    else:
        assert "is not a loopback address: set token_file or token_env" in error_of(text)


def test_the_shipped_controller_and_managed_proxy_configs_are_valid() -> None:
    from controller import config as controller_config

    root = Path(__file__).parents[2] / "config"
    edge = load(root / "edge.yaml")
    assert edge.controller is not None and edge.controller.id == "edge-1" and edge.services == ()
    fleet = controller_config.load(root / "controller.yaml")
    assert list(fleet.document["services"]) == ["demo"] and fleet.settings.listen.port == 9911
    assert fleet.document["services"] == yaml.safe_load((root / "turnout.yaml").read_text())["services"]


@pytest.mark.parametrize(("extra", "message"), [
    ("controller: {url: 'http://127.0.0.1:9911'}", "controller: name the controller's token"),
    ("controller: {url: 'ftp://x', token_env: T}", "controller.url: must be http://host:port"),
    ("controller: {url: 'http://h:1/path', token_env: T}", "controller.url: must be http://host:port"),
])
def test_controller_section_errors(extra: str, message: str) -> None:
    assert message in error_of(BASE + extra + "\n")


def test_a_listen_address_without_host_means_every_interface() -> None:
    config = parse("listen: ':8080'\nadmin: {listen: ':9901', token_env: T}\n" + BASE, "conf.yaml")
    assert (config.listeners[0].address.host, config.listeners[0].address.port) == ("0.0.0.0", 8080)
    assert config.admin is not None and config.admin.listen.host == "0.0.0.0"
    # Every interface is not loopback: the admin API then needs a token that is chosen, not generated.
    assert "is not a loopback address" in error_of("admin: {listen: ':9901'}\n" + BASE)
    # An upstream needs its host.
    assert "versions.v1.endpoints[0]: must be host:port, got ':9001'" in error_of(
        BASE.replace("v1: [127.0.0.1:9001]", "v1: [':9001']"))


def test_regexes_run_on_re2_and_patterns_it_cannot_run_are_refused() -> None:
    from turnout.core.regex import compile_pattern

    # Exponential for a backtracking engine (Python's re would not finish this before the test timeout).
    assert compile_pattern("(a+)+$").fullmatch("a" * 60 + "!") is None
    assert compile_pattern("(a+)+$").fullmatch("a" * 60) is not None
    message = error_of(BASE.replace('x-beta: "1"', r"x-beta: {regex: '(a)\1'}"))
    assert message.startswith("conf.yaml: services.shop.rules[0].match.headers.x-beta.regex: bad regular expression:")
    assert "RE2" in message
    assert "look-around" in error_of(BASE.replace('x-beta: "1"', "x-beta: {regex: 'a(?=b)'}"))
