"""Feature flags in the config: the model and its validation (the evaluation is in ``flags``).

    flags:
      new-checkout:
        variants: {on: true, off: false}      # typed values: boolean, string, number or object
        default: off                          # when disabled, and when nothing else decides
        enabled: true                         # false: everyone gets the default (reason DISABLED)
        rules:                                # targeting, first match wins
          - match:
              headers: {x-beta: "1"}          # the request match language (where there is a request)
              context: {plan: {in: [pro]}, version: {semver_gte: "2.1.0"}, age: {gte: 18}}
            variant: on                       # or: rollout: {on: 50, off: 50}
        rollout: {on: 10, off: 90}            # percentages (up to 3 decimals) adding up to 100
        salt: new-checkout                    # the bucket hash salt (default: the flag key)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .regex import RegexError, compile_pattern

if TYPE_CHECKING:
    from .model import Match
    from .reader import Reader

__all__ = ["ContextCondition", "Flag", "FlagRule", "parse_flags"]

ContextOp = Literal["equals", "in", "prefix", "regex", "gt", "gte", "lt", "lte", "semver_gt", "semver_gte",
                    "semver_lt", "semver_lte", "present", "absent"]
_OPS = frozenset(ContextOp.__args__)  # type: ignore[attr-defined]
_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
ROLLOUT_TOTAL = 100_000  # percent with three decimals


@dataclass(frozen=True, slots=True)
class ContextCondition:
    attribute: str
    op: ContextOp
    value: Any = None


@dataclass(frozen=True, slots=True)
class FlagRule:
    match: Match
    context: tuple[ContextCondition, ...]
    variant: str | None = None
    rollout: tuple[tuple[str, int], ...] | None = None  # variant, thousandths of a percent


@dataclass(frozen=True, slots=True)
class Flag:
    key: str
    variants: tuple[tuple[str, Any], ...]
    default: str
    enabled: bool
    rules: tuple[FlagRule, ...]
    rollout: tuple[tuple[str, int], ...] | None
    salt: str

    def value(self, variant: str) -> Any:
        return dict(self.variants)[variant]


def semver(text: str) -> tuple[int, int, int, int, str] | None:
    """A comparable key for a semantic version (a release sorts after its pre-releases)."""
    found = _SEMVER.match(text.strip())
    if found is None:
        return None
    major, minor, patch, pre = found.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


def parse_flags(parser: Reader, raw: Any, path: str) -> tuple[Flag, ...]:
    body = parser.mapping(raw, path)
    return tuple(_flag(parser, key, value, f"{path}.{key}") for key, value in body.items())


def _flag(parser: Reader, key: str, raw: Any, path: str) -> Flag:
    parser.name(key, path, "flag key")
    body = parser.mapping(raw, path, {"variants", "default", "enabled", "rules", "rollout", "salt"})
    variants_raw = parser.mapping(body.get("variants"), f"{path}.variants")
    if not variants_raw:
        raise parser.fail(f"{path}.variants", "at least one variant is required")
    kinds = {_value_kind(value) for value in variants_raw.values()}
    if None in kinds:
        raise parser.fail(f"{path}.variants", "values must be booleans, strings, numbers or objects")
    if len(kinds) > 1:
        found = ", ".join(sorted(map(str, kinds)))
        raise parser.fail(f"{path}.variants", f"all variants must have one type, got {found}")
    # Variant names go into the injected header as ``key=variant, ...``: plain names keep it unambiguous.
    names = [parser.name(name, f"{path}.variants.{name}", "variant name") for name in variants_raw]
    default = parser.string(body.get("default"), f"{path}.default")
    if default not in names:
        raise parser.fail(f"{path}.default", _unknown(default, names))
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise parser.fail(f"{path}.enabled", "must be true or false")
    rules_raw = body.get("rules", [])
    if not isinstance(rules_raw, list):
        raise parser.fail(f"{path}.rules", "must be a list of rules")
    rules = tuple(_rule(parser, item, f"{path}.rules[{i}]", names) for i, item in enumerate(rules_raw))
    rollout = _rollout(parser, body["rollout"], f"{path}.rollout", names) if "rollout" in body else None
    salt = body.get("salt", key)
    if not isinstance(salt, str):
        raise parser.fail(f"{path}.salt", "must be a string")
    return Flag(key, tuple(variants_raw.items()), default, enabled, rules, rollout, salt)


def _value_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return None


def _rule(parser: Reader, raw: Any, path: str, names: list[str]) -> FlagRule:
    body = parser.mapping(raw, path, {"match", "variant", "rollout"})
    match_raw = dict(parser.mapping(body.get("match"), f"{path}.match"))
    context_raw = match_raw.pop("context", None)
    match = parser.match(match_raw, f"{path}.match")
    context = _context(parser, context_raw, f"{path}.match.context")
    if ("variant" in body) == ("rollout" in body):
        raise parser.fail(path, "needs exactly one of 'variant' or 'rollout'")
    if "variant" in body:
        variant = parser.string(body["variant"], f"{path}.variant")
        if variant not in names:
            raise parser.fail(f"{path}.variant", _unknown(variant, names))
        return FlagRule(match, context, variant=variant)
    return FlagRule(match, context, rollout=_rollout(parser, body["rollout"], f"{path}.rollout", names))


def _context(parser: Reader, raw: Any, path: str) -> tuple[ContextCondition, ...]:
    body = parser.mapping(raw, path)
    conditions = []
    for attribute, spec in body.items():
        where = f"{path}.{attribute}"
        if not isinstance(spec, dict):
            conditions.append(ContextCondition(attribute, "equals", spec))
            continue
        if len(spec) != 1:
            raise parser.fail(where, f"give exactly one of {', '.join(sorted(_OPS))}")
        ((op, value),) = spec.items()
        if op not in _OPS:
            raise parser.fail(f"{where}.{op}", f"unknown operator (allowed: {', '.join(sorted(_OPS))})")
        if op in ("present", "absent") and value is not True:
            raise parser.fail(f"{where}.{op}", "must be true")
        if op == "in" and not isinstance(value, list):
            raise parser.fail(f"{where}.in", "must be a list")
        if op in ("gt", "gte", "lt", "lte") and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise parser.fail(f"{where}.{op}", "must be a number")
        if op.startswith("semver") and (not isinstance(value, str) or semver(value) is None):
            raise parser.fail(f"{where}.{op}", f"must be a semantic version such as 2.1.0, got {value!r}")
        if op in ("prefix", "regex") and not isinstance(value, str):
            raise parser.fail(f"{where}.{op}", "must be a string")
        if op == "regex":
            try:
                compile_pattern(value)
            except RegexError as exc:
                raise parser.fail(f"{where}.regex", f"bad regular expression: {exc}") from None
        conditions.append(ContextCondition(attribute, op, value))
    return tuple(conditions)


def _rollout(parser: Reader, raw: Any, path: str, names: list[str]) -> tuple[tuple[str, int], ...]:
    body = parser.mapping(raw, path)
    if not body:
        raise parser.fail(path, "must give a percentage to at least one variant")
    shares = []
    for variant, value in body.items():
        if variant not in names:
            raise parser.fail(f"{path}.{variant}", _unknown(variant, names))
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:  # NaN too
            raise parser.fail(f"{path}.{variant}", f"must be a percentage from 0 to 100, got {value!r}")
        thousandths = round(value * 1000)
        if abs(thousandths - value * 1000) > 1e-6:
            raise parser.fail(f"{path}.{variant}", f"at most three decimals, got {value!r}")
        shares.append((variant, thousandths))
    total = sum(share for _, share in shares)
    if total != ROLLOUT_TOTAL:
        raise parser.fail(path, f"percentages must add up to 100, got {total / 1000:g}")
    return tuple(shares)


def _unknown(name: str, names: list[str]) -> str:
    return f"unknown variant {name!r} (variants: {', '.join(names)})"
