"""Feature flags: config validation and the pure evaluator (issue 4, first part: no OFREP yet)."""

from __future__ import annotations

from collections import Counter

import pytest

from turnout.core import buckets
from turnout.core.errors import ConfigError
from turnout.core.flags import FlagSet, per_flag
from turnout.core.match import Request
from turnout.core.reader import parse
from turnout.core.routing import build

SERVICE = "services: {s: {versions: {v1: []}, version: v1}}\n"

FLAGS = SERVICE + """
flags:
  checkout:
    variants: {"on": true, "off": false}
    default: "off"
    rules:
      - match: {context: {plan: {in: [pro, enterprise]}}}
        variant: "on"
      - match: {context: {app_version: {semver_gte: "2.1.0"}, age: {gte: 18}}}
        variant: "on"
      - match: {headers: {x-beta: "1"}}
        variant: "on"
    rollout: {"on": 10, "off": 90}
  banner:
    variants: {blue: "#00f", red: "#f00"}
    default: blue
  limits:
    variants: {small: 10, large: 1000}
    default: small
    enabled: false
    rollout: {small: 50, large: 50}
  layout:
    variants: {a: {cols: 2}, b: {cols: 3}}
    default: a
    rules:
      - match: {context: {country: NL}}
        rollout: {a: 50, b: 50}
"""


def flag_set(text: str = FLAGS, previous: FlagSet | None = None) -> FlagSet:
    """The flags of ``text``, their tables planned from ``previous`` as the writer does."""
    flags = parse(text, "f.yaml").flags
    return FlagSet(flags, buckets.plan(previous.tables() if previous else {}, FlagSet.wanted(flags)))


@pytest.mark.parametrize(
    ("flag", "key", "context", "value", "variant", "reason", "error"),
    [
        ("checkout", "u1", {"plan": "pro"}, True, "on", "TARGETING_MATCH", None),
        ("checkout", "u1", {"app_version": "2.10.0", "age": 30}, True, "on", "TARGETING_MATCH", None),
        ("checkout", "u1", {"app_version": "2.1.0-rc.1", "age": 30}, None, None, "SPLIT", None),  # pre-release < 2.1.0
        ("checkout", None, {}, False, "off", "ERROR", "TARGETING_KEY_MISSING"),
        ("banner", None, {}, "#00f", "blue", "STATIC", None),
        ("limits", "u1", {}, 10, "small", "DISABLED", None),
        ("layout", "u1", {"country": "DE"}, {"cols": 2}, "a", "DEFAULT", None),
        ("nope", "u1", {}, None, None, "ERROR", "FLAG_NOT_FOUND"),
    ],
)
def test_reasons_and_values(flag, key, context, value, variant, reason, error) -> None:
    result = flag_set().evaluate(flag, key, context)
    assert (result.reason, result.error_code) == (reason, error)
    if value is not None:
        assert (result.value, result.variant) == (value, variant)


def test_request_conditions_apply_only_with_a_request() -> None:
    flags = flag_set()
    request = Request("GET", "/", "", {"x-beta": "1"}, "127.0.0.1")
    assert flags.evaluate("checkout", "u1", {}, request).reason == "TARGETING_MATCH"
    assert flags.evaluate("checkout", "u1", {}).reason == "SPLIT"


def test_rollout_share_and_growth_keeps_everyone_who_had_it() -> None:
    flags = flag_set()
    users = [f"user-{i}" for i in range(20_000)]
    at_10 = {u for u in users if flags.evaluate("checkout", u, {}).value}
    assert abs(len(at_10) - 2000) < 5 * (20_000 * 0.1 * 0.9) ** 0.5
    grown = flag_set(FLAGS.replace('rollout: {"on": 10, "off": 90}', 'rollout: {"on": 20, "off": 80}'), flags)
    at_20 = {u for u in users if grown.evaluate("checkout", u, {}).value}
    assert at_10 <= at_20
    back = flag_set(FLAGS, grown)
    assert {u for u in users if back.evaluate("checkout", u, {}).value} == at_10  # newest leave first


def test_rule_rollout_splits_its_cohort() -> None:
    flags = flag_set()
    seen = Counter(flags.evaluate("layout", f"k{i}", {"country": "NL"}).variant for i in range(4000))
    assert 1700 < seen["a"] < 2300 and seen["a"] + seen["b"] == 4000


def test_the_flag_salt_keeps_flags_independent_of_routing() -> None:
    flags = flag_set()
    on = [flags.evaluate("checkout", f"u{i}", {}).value for i in range(2000)]
    rollout = '    rollout: {"on": 10, "off": 90}'
    resalted = flag_set(FLAGS.replace(rollout, rollout + "\n    salt: x"))
    assert on != [resalted.evaluate("checkout", f"u{i}", {}).value for i in range(2000)]


def test_flags_sharing_one_hash_stay_independent_of_each_other_and_of_routing() -> None:
    # One hash of the key serves every flag (each flag permutes the buckets by its salt): two flags at
    # 10 % must still overlap like independent draws (1 %), and so must a flag and a 10 % canary.
    two = SERVICE + "flags:\n" + "".join(
        f"  f{i}: {{variants: {{'y': true, 'n': false}}, default: 'n', rollout: {{'y': 10, 'n': 90}}}}\n"
        for i in range(2))
    flags = flag_set(two)
    split = build(parse(SERVICE.replace("version: v1", "split: {v1: 90, v2: 10}, sticky: {header: x-user}")
                        .replace("v1: []", "v1: [], v2: []"), "f.yaml"))
    keys = [f"user-{i}" for i in range(40_000)]
    f0 = {k for k in keys if flags.evaluate("f0", k, {}).value}
    f1 = {k for k in keys if flags.evaluate("f1", k, {}).value}
    canary = {k for k in keys
              if split.services["s"].decide(Request("GET", "/", "", {"x-user": k}, ""), lambda: 0).version.name == "v2"}
    sigma = (40_000 * 0.01 * 0.99) ** 0.5
    for cohort in (f1, canary):
        assert abs(len(f0) - 4000) < 5 * (40_000 * 0.1 * 0.9) ** 0.5
        assert abs(len(f0 & cohort) - len(f0) * len(cohort) / 40_000) < 5 * sigma
    same_salt = flag_set(two.replace("f1: {", "f1: {salt: f0, "))
    assert {k for k in keys if same_salt.evaluate("f1", k, {}).value} == f0  # a shared salt: the same users


def request(headers: dict[str, str] | None = None) -> Request:
    return Request("GET", "/", "", headers or {}, "127.0.0.1")


def test_injected_header_is_the_evaluated_variant_of_each_flag() -> None:
    flags = flag_set()
    plain = flags.injection(("banner", "limits", "layout"))  # no rule looks at the request: memoised
    assert plain.memo is not None
    assert plain.header("u1", request()) == plain.header("u1", request()) == b"banner=blue, limits=small, layout=a"
    assert plain.header(None, request()) == b"banner=blue, limits=small, layout=a"
    with_request_rule = flags.injection(("checkout", "banner"))  # x-beta decides: evaluated per request
    assert with_request_rule.memo is None
    assert with_request_rule.header("u1", request({"x-beta": "1"})) == b"checkout=on, banner=blue"
    assert with_request_rule.header(None, request()) == b"checkout=off, banner=blue"  # a rollout needs a key
    rollout_only = flag_set(FLAGS.replace("      - match: {headers: {x-beta: \"1\"}}\n        variant: \"on\"\n", ""))
    injection = rollout_only.injection(("checkout",))
    assert injection.memo is not None
    for i in range(3000):  # the memo (filled on first use of a bucket) answers what evaluation answers
        expected = rollout_only.evaluate("checkout", f"k{i % 2000}", {}).variant
        assert injection.header(f"k{i % 2000}", request()) == f"checkout={expected}".encode()
    assert len(injection.distinct) == 2


def test_injection_applies_rules_on_the_targeting_key() -> None:
    text = FLAGS.replace("      - match: {headers: {x-beta: \"1\"}}",
                         "      - match: {context: {targetingKey: {in: [alice]}}}")
    injection = flag_set(text).injection(("checkout",))
    assert injection.memo is None
    assert injection.header("alice", request()) == b"checkout=on"


def test_injected_counts_spread_into_evaluations_per_flag() -> None:
    assert per_flag({b"a=on, b=red": 3, b"a=off, b=red": 2}) == {("a", "on"): 3, ("a", "off"): 2, ("b", "red"): 5}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('rollout: {"on": 10, "off": 90}', 'rollout: {"on": 10, maybe: 90}',
         "flags.checkout.rollout.maybe: unknown variant 'maybe' (variants: on, off)"),
        ('rollout: {"on": 10, "off": 90}', 'rollout: {"on": 10, "off": 80}',
         "flags.checkout.rollout: percentages must add up to 100, got 90"),
        ('rollout: {"on": 10, "off": 90}', 'rollout: {"on": .nan, "off": 90}',
         "flags.checkout.rollout.on: must be a percentage from 0 to 100, got nan"),
        ('rollout: {"on": 10, "off": 90}', 'rollout: {"on": .inf, "off": 90}',
         "flags.checkout.rollout.on: must be a percentage from 0 to 100, got inf"),
        ("{plan: {in: [pro, enterprise]}}", "{plan: {regex: '('}}",
         "flags.checkout.rules[0].match.context.plan.regex: bad regular expression"),
        ('{app_version: {semver_gte: "2.1.0"}', '{app_version: {semver_gte: "two"}',
         "flags.checkout.rules[1].match.context.app_version.semver_gte: must be a semantic version"),
        ('default: "off"', "default: maybe", "flags.checkout.default: unknown variant 'maybe'"),
        ('variants: {blue: "#00f", red: "#f00"}', 'variants: {blue: "#00f", red: 1}',
         "flags.banner.variants: all variants must have one type"),
        ('        variant: "on"\n      - match: {context: {app', '        variant: nope\n      - match: {context: {app',
         "flags.checkout.rules[0].variant: unknown variant 'nope'"),
        ('variants: {"on": true, "off": false}', "variants: {on: true, off: false}",
         "keys must be strings, got True (YAML reads on/off/yes/no as booleans: quote them)"),
        ('variants: {blue: "#00f", red: "#f00"}', 'variants: {blue: "#00f", "red, dark": "#f00"}',
         "flags.banner.variants.red, dark: variant name 'red, dark' must be 1-63 letters"),
    ],
)
def test_bad_flags_name_the_field(old: str, new: str, message: str) -> None:
    assert old in FLAGS
    with pytest.raises(ConfigError) as info:
        parse(FLAGS.replace(old, new, 1), "f.yaml")
    assert message in str(info.value)
