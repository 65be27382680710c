"""Admin changes as an overlay on the config file, and the pure operations that make them.

The routing state is layered: the file < discovery (Docker, later) < admin changes. The file stays
the user's; what the admin API changes lives in an *overlay* that is merged over the layer below to
give the effective config. Its shape is deliberately small::

    {service: {"rules": [...], "versions": {version: {"endpoints": [...]}, ...}},
     service: {"service": {...} | None},          # a pin: the whole service as given, or removed
     "@flags": {key: flag | None}}

- ``rules`` present: it replaces the service's rules (a weight change writes the whole rules list);
- ``versions.<v>``: adds that version or replaces its entry;
- ``service``: replaces the whole service (or removes it): what an exact rollback writes (``pin``).

So after a SIGHUP the new file is merged with the same overlay: the admin's weights keep winning over
the file's until the admin changes them again, rolls back or resets (``reset``). ``shadows`` says
which parts of the file an overlay hides. A patched service the file no longer has is skipped (and
reported), never invented; a pinned one is what was pinned.

Pure: documents in, documents out, ``ChangeError`` for requests that cannot apply.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ChangeError

__all__ = ["FLAGS", "delete_flag", "diff", "merge", "pin", "replace_rules", "reset", "rules_of",
           "set_flag", "set_flag_enabled", "set_flag_rollout", "set_version", "set_weights", "shadows"]

FLAGS = "@flags"  # the overlay's flags (no service name can start with '@'): key -> flag document or None

Document = dict[str, Any]
Overlay = dict[str, dict[str, Any]]

_SHORTHAND = ("split", "sticky", "version")


def rules_of(service: dict[str, Any]) -> list[Any]:
    """A service's rules, turning the service-level shorthand into its one default rule."""
    if "rules" in service:
        return list(service["rules"])
    shorthand = {key: service[key] for key in _SHORTHAND if key in service}
    return [{"name": "default", **shorthand}] if shorthand else []


def merge(document: Any, overlay: Overlay) -> tuple[Any, list[str]]:
    """The effective document, and the overlaid services the file no longer has (left out)."""
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        return document, sorted(overlay)  # the file is broken: config validation will say how
    effective = copy.deepcopy(document)
    services = effective["services"]
    skipped = []
    if overlay.get(FLAGS):
        flags = effective.get("flags")
        flags = effective["flags"] = dict(flags) if isinstance(flags, dict) else {}
        for key, flag in overlay[FLAGS].items():
            if flag is None:
                flags.pop(key, None)
            else:
                flags[key] = copy.deepcopy(flag)
    for name, parts in overlay.items():
        if name == FLAGS:
            continue
        if "service" in parts:  # a pin
            if parts["service"] is None:
                services.pop(name, None)
            else:
                services[name] = copy.deepcopy(parts["service"])
            continue
        service = services.get(name)
        if not isinstance(service, dict):
            skipped.append(name)
            continue
        if "versions" in parts:
            versions = service.setdefault("versions", {})
            if isinstance(versions, dict):
                versions.update(copy.deepcopy(parts["versions"]))
        if "rules" in parts:
            for key in _SHORTHAND:
                service.pop(key, None)
            service["rules"] = copy.deepcopy(parts["rules"])
    return effective, skipped


def pin(below: Any, target: Any) -> Overlay:
    """The overlay that makes ``merge(below, overlay)`` route exactly as ``target`` does (its services
    and flags), whatever ``below`` says now: an exact rollback to a generation's effective document."""
    services = below.get("services", {}) if isinstance(below, dict) else {}
    services = services if isinstance(services, dict) else {}
    wanted = target.get("services", {})
    pinned: Overlay = {name: {"service": copy.deepcopy(entry)} for name, entry in wanted.items()
                       if services.get(name) != entry}
    pinned.update({name: {"service": None} for name in services if name not in wanted})
    flags = (below.get("flags") or {}) if isinstance(below, dict) else {}
    flags = flags if isinstance(flags, dict) else {}
    target_flags = target.get("flags") or {}
    flag_pins = {key: copy.deepcopy(flag) for key, flag in target_flags.items() if flags.get(key) != flag}
    flag_pins.update({key: None for key in flags if key not in target_flags})
    if flag_pins:
        pinned[FLAGS] = flag_pins
    return pinned


def reset(overlay: Overlay, services: list[str] | None, flags: list[str] | None) -> Overlay:
    """The overlay without the given services' and flags' changes (None: all of that kind), so that
    the layer below shows through again. Resetting what has no changes is a 409."""
    changed = copy.deepcopy(overlay)
    for name in services if services is not None else [n for n in overlay if n != FLAGS]:
        if name == FLAGS or name not in changed:
            raise ChangeError(409, f"service {name!r} has no admin changes to reset", "services")
        del changed[name]
    flag_changes = changed.get(FLAGS, {})
    for key in flags if flags is not None else list(flag_changes):
        if key not in flag_changes:
            raise ChangeError(409, f"flag {key!r} has no admin changes to reset", "flags")
        del flag_changes[key]
    if FLAGS in changed and not flag_changes:
        del changed[FLAGS]
    if changed == overlay:
        raise ChangeError(409, "there are no admin changes to reset", "services")
    return changed


def shadows(overlay: Overlay) -> dict[str, list[str]]:
    """What each overlay entry hides of the layer below: ``{"services.demo": ["rules", "versions.v2"],
    "flags.new-checkout": ["flag"]}`` (an entry's parts, in the config's vocabulary)."""
    found: dict[str, list[str]] = {}
    for name, parts in overlay.items():
        if name == FLAGS:
            for key, flag in parts.items():
                found[f"flags.{key}"] = ["flag" if flag is not None else "removed"]
        elif "service" in parts:
            found[f"services.{name}"] = ["service" if parts["service"] is not None else "removed"]
        else:
            found[f"services.{name}"] = [*(["rules"] if "rules" in parts else []),
                                         *(f"versions.{v}" for v in parts.get("versions", {}))]
    return found


def _service(effective: Document, name: str) -> dict[str, Any]:
    service = effective.get("services", {}).get(name)
    if not isinstance(service, dict):
        raise ChangeError(404, f"no service {name!r}", "service")
    return service


def set_weights(effective: Document, overlay: Overlay, service: str, rule: str,
                weights: dict[str, int]) -> Overlay:
    """Give a split rule new weights (validated later, with the whole config)."""
    rules = copy.deepcopy(rules_of(_service(effective, service)))
    for index, entry in enumerate(rules):
        default_name = "default" if index == len(rules) - 1 else f"rule-{index}"  # as config names them
        if isinstance(entry, dict) and entry.get("name", default_name) == rule:
            if "split" not in entry:
                raise ChangeError(409, f"rule {rule!r} routes to one version, not a split; replace the rules "
                                  "to split it", "rule")
            entry["split"] = dict(weights)
            break
    else:
        raise ChangeError(404, f"service {service!r} has no rule {rule!r}", "rule")
    return replace_rules(effective, overlay, service, rules)


def _entry(changed: Overlay, service: str) -> dict[str, Any]:
    """Where a change to ``service`` goes: its patch, or the pinned service itself (a pin is whole)."""
    parts = changed.setdefault(service, {})
    return parts["service"] if parts.get("service") is not None else parts


def replace_rules(effective: Document, overlay: Overlay, service: str, rules: list[Any]) -> Overlay:
    _service(effective, service)
    changed = copy.deepcopy(overlay)
    entry = _entry(changed, service)
    if entry is not changed[service]:  # a pinned service: its shorthand gives way to the rules, as in merge
        for key in _SHORTHAND:
            entry.pop(key, None)
    entry["rules"] = copy.deepcopy(rules)
    return changed


def set_version(effective: Document, overlay: Overlay, service: str, version: str,
                entry: dict[str, Any]) -> Overlay:
    """Add a version, or replace its endpoints (and TLS settings)."""
    _service(effective, service)
    changed = copy.deepcopy(overlay)
    versions = _entry(changed, service).setdefault("versions", {})
    if not isinstance(versions, dict):
        raise ChangeError(409, f"service {service!r} has no versions mapping to add to", "service")
    versions[version] = copy.deepcopy(entry)
    return changed


def _flag(effective: Document, key: str) -> dict[str, Any]:
    flag = (effective.get("flags") or {}).get(key)
    if not isinstance(flag, dict):
        raise ChangeError(404, f"no flag {key!r}", "flag")
    return flag


def set_flag(effective: Document, overlay: Overlay, key: str, flag: dict[str, Any]) -> Overlay:
    """Create a flag or replace it (validated later, with the whole config)."""
    changed = copy.deepcopy(overlay)
    changed.setdefault(FLAGS, {})[key] = copy.deepcopy(flag)
    return changed


def delete_flag(effective: Document, overlay: Overlay, key: str) -> Overlay:
    _flag(effective, key)
    changed = copy.deepcopy(overlay)
    changed.setdefault(FLAGS, {})[key] = None
    return changed


def set_flag_enabled(effective: Document, overlay: Overlay, key: str, enabled: bool) -> Overlay:
    """Switch a flag on or off (off: everyone gets its default variant, at once: the kill switch)."""
    flag = copy.deepcopy(_flag(effective, key))
    flag["enabled"] = enabled
    return set_flag(effective, overlay, key, flag)


def set_flag_rollout(effective: Document, overlay: Overlay, key: str, rollout: dict[str, Any]) -> Overlay:
    """Change only a flag's percentage rollout (its buckets move minimally, as for splits)."""
    flag = copy.deepcopy(_flag(effective, key))
    flag["rollout"] = dict(rollout)
    return set_flag(effective, overlay, key, flag)


def diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """Field-level differences between two documents, as {path, before, after}."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes = []
        for key in [*before, *(k for k in after if k not in before)]:
            where = f"{path}.{key}" if path else str(key)
            if key not in after:
                changes.append({"path": where, "before": before[key], "after": None})
            elif key not in before:
                changes.append({"path": where, "before": None, "after": after[key]})
            else:
                changes.extend(diff(before[key], after[key], where))
        return changes
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [change for i, (a, b) in enumerate(zip(before, after, strict=True))
                for change in diff(a, b, f"{path}[{i}]")]
    return [] if before == after else [{"path": path, "before": before, "after": after}]
