"""Feature flag evaluation on the same bucket function that routes requests.

Rule 1: pure. A flag set is compiled once per snapshot; evaluating is a dict lookup, the targeting rules
in order, and for a percentage rollout one table index by the key's shared flag bucket (see ``hashing``:
one hash of the targeting key serves every flag; each flag's salt permutes the buckets). Rollout tables
are rebalanced like split tables (``buckets.rebalance_table``): raising a rollout from 10 % to 20 % keeps
every key that had the variant, and lowering it gives back the newest first.

Reasons follow OpenFeature/OFREP: STATIC (nothing to decide: the default), TARGETING_MATCH (a rule
matched), SPLIT (the percentage rollout decided), DISABLED (the flag is switched off: its default),
DEFAULT (rules and rollout exist but none applied), ERROR (with an error code: FLAG_NOT_FOUND,
TARGETING_KEY_MISSING when a rollout needs a key and none was given).
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from typing import Any

from . import buckets, regex
from .buckets import BUCKETS
from .flagconfig import ContextCondition, Flag, semver
from .hashing import FLAG_KEYS, permutation
from .match import Predicate, Request, compile_match

__all__ = ["Evaluation", "FlagSet", "Injection", "per_flag"]

Tables = buckets.Tables


class Evaluation:
    __slots__ = ("error_code", "error_details", "key", "reason", "value", "variant")

    def __init__(self, key: str, value: Any, variant: str | None, reason: str, error_code: str | None = None,
                 error_details: str | None = None) -> None:
        self.key = key
        self.value = value
        self.variant = variant
        self.reason = reason
        self.error_code = error_code
        self.error_details = error_details


class _Rollout:
    __slots__ = ("by_key", "table")

    def __init__(self, table: buckets.Table, shuffle: array[int]) -> None:
        self.table = table
        owners = self.table.owners
        # Indexed by the key's shared flag bucket: the flag's own bucket is ``shuffle[shared]``, looked up
        # here once per snapshot instead of on every request.
        self.by_key = [owners[bucket] for bucket in shuffle]


def _shares(shares: tuple[tuple[str, int], ...]) -> dict[str, int]:
    return {variant: share for variant, share in shares if share > 0}


class _Rule:
    __slots__ = ("context", "predicate", "rollout", "variant")

    def __init__(self, predicate: Predicate | None, context: tuple[ContextCondition, ...], variant: str | None,
                 rollout: _Rollout | None) -> None:
        self.predicate = predicate
        self.context = context
        self.variant = variant
        self.rollout = rollout


class _Compiled:
    __slots__ = ("default", "enabled", "injected_rules", "key", "keyed", "labels", "plain", "rollout", "rules",
                 "values")

    def __init__(self, flag: Flag, tables: Tables) -> None:
        self.key = flag.key
        self.enabled = flag.enabled
        self.default = flag.default
        self.values = dict(flag.variants)
        shuffle = permutation(flag.salt)
        self.rules = tuple(
            _Rule(compile_match(rule.match), rule.context, rule.variant,
                  _Rollout(tables[(flag.key, f"rules[{i}]")], shuffle) if rule.rollout else None)
            for i, rule in enumerate(flag.rules)
        )
        self.rollout = _Rollout(tables[(flag.key, "rollout")], shuffle) if flag.rollout else None
        self.labels = {variant: f"{flag.key}={variant}" for variant in self.values}  # as injected
        # An injected evaluation's context holds only the targeting key: rules that test other context
        # attributes can never match there, so injection does not even try them.
        self.injected_rules = tuple(rule for rule in self.rules if all(
            condition.attribute == "targetingKey" or condition.op == "absent" for condition in rule.context))
        # Injected, a flag with no such rule (or a disabled one) depends on the key's shared bucket alone.
        self.keyed = not self.enabled or not self.injected_rules
        # The common case, a plain percentage rollout: injection reads its table directly.
        self.plain = self.rollout.by_key if self.enabled and self.rollout is not None and not self.injected_rules \
            else None

    def decide(self, targeting_key: str | None, context: Mapping[str, Any], request: Request | None,
               rules: tuple[_Rule, ...] | None = None, shared: int | None = None) -> tuple[str, str, str | None]:
        """(variant, reason, error code): the one decision both OFREP and injection use.

        ``shared`` is the key's shared flag bucket when the caller has it already (injection hashes once
        for all flags)."""
        if not self.enabled:
            return self.default, "DISABLED", None
        for rule in self.rules if rules is None else rules:
            if rule.predicate is not None and (request is None or not rule.predicate(request)):
                continue  # request conditions hold only where there is a request
            if rule.context and not all(_holds(condition, context, targeting_key) for condition in rule.context):
                continue
            if rule.variant is not None:
                return rule.variant, "TARGETING_MATCH", None
            assert rule.rollout is not None
            return self._split(rule.rollout, targeting_key, shared, "TARGETING_MATCH")
        if self.rollout is not None:
            return self._split(self.rollout, targeting_key, shared, "SPLIT")
        return self.default, "DEFAULT" if self.rules else "STATIC", None

    def _split(self, rollout: _Rollout, targeting_key: str | None, shared: int | None,
               reason: str) -> tuple[str, str, str | None]:
        if not targeting_key:
            return self.default, "ERROR", "TARGETING_KEY_MISSING"
        if shared is None:
            shared = FLAG_KEYS.bucket(targeting_key.encode())
        return rollout.by_key[shared], reason, None


class FlagSet:
    """The flags of one snapshot."""

    def __init__(self, flags: tuple[Flag, ...], tables: Tables) -> None:
        """``tables``: exactly the rollout tables ``wanted`` asks for (``buckets.check`` has checked them)."""
        self.flags = {flag.key: _Compiled(flag, tables) for flag in flags}

    @staticmethod
    def wanted(flags: tuple[Flag, ...]) -> dict[tuple[str, str], dict[str, int]]:
        """The rollout tables these flags need, by (flag key, part), with their variants' shares."""
        wanted = {}
        for flag in flags:
            if flag.rollout:
                wanted[(flag.key, "rollout")] = _shares(flag.rollout)
            for i, rule in enumerate(flag.rules):
                if rule.rollout:
                    wanted[(flag.key, f"rules[{i}]")] = _shares(rule.rollout)
        return wanted

    def tables(self) -> Tables:
        found: Tables = {}
        for key, compiled in self.flags.items():
            if compiled.rollout is not None:
                found[(key, "rollout")] = compiled.rollout.table
            for i, rule in enumerate(compiled.rules):
                if rule.rollout is not None:
                    found[(key, f"rules[{i}]")] = rule.rollout.table
        return found

    def evaluate(self, key: str, targeting_key: str | None, context: Mapping[str, Any],
                 request: Request | None = None) -> Evaluation:
        compiled = self.flags.get(key)
        if compiled is None:
            return Evaluation(key, None, None, "ERROR", "FLAG_NOT_FOUND", f"no flag {key!r}")
        variant, reason, error = compiled.decide(targeting_key, context, request)
        details = "a percentage rollout needs a targeting key" if error == "TARGETING_KEY_MISSING" else None
        return Evaluation(key, compiled.values[variant], variant, reason, error, details)

    def injection(self, keys: tuple[str, ...]) -> Injection:
        return Injection(tuple(self.flags[key] for key in keys))


class Injection:
    """The flags one service injects, for one snapshot: the header value for each request.

    When no injected flag looks at the request, the value depends on the key's shared flag bucket alone,
    so it is built once per bucket, on first use, and then is one hash and one list index per request.
    (A lazily filled cache, but no clock, no I/O and the same answer either way.)
    """

    __slots__ = ("distinct", "flags", "memo")

    def __init__(self, flags: tuple[_Compiled, ...]) -> None:
        self.flags = flags
        # One slot per shared bucket, and a last one for requests without a key.
        self.memo: list[bytes | None] | None = [None] * (BUCKETS + 1) if all(f.keyed for f in flags) else None
        self.distinct: dict[bytes, bytes] = {}  # few distinct values: every bucket holding one shares it

    def header(self, targeting_key: str | None, request: Request) -> bytes:
        """``key=variant, key=variant`` in the configured order (the caller counts it: see ``per_flag``)."""
        shared = FLAG_KEYS.bucket(targeting_key.encode()) if targeting_key else None
        memo = self.memo
        if memo is None:
            return self._build(targeting_key, shared, request)
        slot = BUCKETS if shared is None else shared
        value = memo[slot]
        if value is None:
            value = self._build(targeting_key, shared, request)
            value = memo[slot] = self.distinct.setdefault(value, value)
        return value

    def _build(self, targeting_key: str | None, shared: int | None, request: Request) -> bytes:
        parts = []
        context = {"targetingKey": targeting_key} if targeting_key else {}
        for compiled in self.flags:
            if compiled.plain is not None and shared is not None:
                variant = compiled.plain[shared]
            else:
                variant = compiled.decide(targeting_key, context, request, compiled.injected_rules, shared)[0]
            parts.append(compiled.labels[variant])
        return ", ".join(parts).encode()


def per_flag(injected: Mapping[bytes, int]) -> dict[tuple[str, str], int]:
    """Evaluations by (flag, variant) from counts of injected header values: the hot path counts each
    value once per request, not each flag, and this spreads it out when the numbers are read."""
    found: dict[tuple[str, str], int] = {}
    for value, times in injected.items():
        for part in value.decode().split(", ") if value else ():
            flag, _, variant = part.partition("=")
            found[(flag, variant)] = found.get((flag, variant), 0) + times
    return found


def _holds(condition: ContextCondition, context: Mapping[str, Any], targeting_key: str | None) -> bool:
    attribute = condition.attribute
    present = attribute in context or (attribute == "targetingKey" and targeting_key is not None)
    value = context.get(attribute, targeting_key if attribute == "targetingKey" else None)
    op, expected = condition.op, condition.value
    if op == "present":
        return present
    if op == "absent":
        return not present
    if not present:
        return False
    if op == "equals":
        return bool(value == expected)
    if op == "in":
        return bool(value in expected)
    if op in ("prefix", "regex"):
        if not isinstance(value, str):
            return False
        return value.startswith(expected) if op == "prefix" else regex.fullmatch(expected, value)
    if op in ("gt", "gte", "lt", "lte"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        number = float(expected)
        return {"gt": value > number, "gte": value >= number, "lt": value < number, "lte": value <= number}[op]
    have = semver(value) if isinstance(value, str) else None
    want = semver(expected)
    if have is None or want is None:
        return False
    return {"semver_gt": have > want, "semver_gte": have >= want, "semver_lt": have < want,
            "semver_lte": have <= want}[op]

