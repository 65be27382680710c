"""The writer of routing state — the proxy's own control, or the controller of a fleet — with its I/O
passed in, so that both run the very same change path:

1. build the new overlay (``overlay``, pure) and merge it over the source document *as last loaded*
   (the source is read only at boot and on reload, never by a change);
2. validate the result as a whole config (``validate``: the reader, plus whatever the process checks
   besides, such as certificate files), so errors name the field;
3. ``Desired.commit``: number the generation and plan its bucket tables once (an exact rollback plans
   from the generation's own tables, which gives them back);
4. ``persist`` it; a change that cannot be written is refused (507) and changes nothing;
5. only then keep the new state and hand the ``wire.Snapshot`` to ``apply`` (the receivers), which
   apply exactly that or refuse it and say why.

The class holds no I/O of its own: ``read_source``, ``validate``, ``persist``, ``apply`` and ``clock``
come from the shell that owns the files, the sockets and the time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import buckets, overlay, routing
from .desired import Desired, Entry
from .discovery import Discovered
from .errors import ChangeError, ConfigError
from .model import Config
from .overlay import Overlay
from .wire import Snapshot

__all__ = ["Writer"]

log = logging.getLogger("turnout")


class Writer:
    def __init__(self, name: str, read_source: Callable[[], Any], validate: Callable[[Any], Config],
                 persist: Callable[[dict[str, Any]], None], clock: Callable[[], float],
                 apply: Callable[[Config, Snapshot], None] | None = None) -> None:
        """``name``: the source as logs call it; ``read_source``: the source document, validated by
        itself (``ConfigError``); ``validate``: an effective document -> its config (``ConfigError``);
        ``persist``: write ``Desired.saved()`` durably (``OSError``)."""
        self.name = name
        self.read_source = read_source
        self.validate = validate
        self.persist = persist
        self.clock = clock
        self.apply = apply or _nobody
        self.desired = Desired()
        self.reloads = {"success": 0, "failure": 0}  # source reloads by result, counted once each

    @property
    def generation(self) -> int:
        return self.desired.generation

    @property
    def history(self) -> tuple[Entry, ...]:
        return self.desired.history

    def boot(self, saved: dict[str, Any] | None, who: str) -> tuple[Config, Snapshot]:
        """The first generation of this run: the source (valid by itself) with the saved overlay on top,
        its tables planned from the saved ones, persisted before anything serves it (``ConfigError``,
        or ``ChangeError`` 507)."""
        self.desired = Desired.restored(saved, self.read_source())
        document = self.desired.document()
        config = self.validate(document)
        return config, self._commit_valid(who, "start", self.desired.overlay, config, document, None)

    def change(self, who: str, what: str, make: Callable[[Any, Overlay], Overlay],
               if_match: int | None = None) -> Entry:
        self.desired.check_if_match(if_match)
        return self._commit(who, what, make(self.desired.document(), self.desired.overlay))

    def preview(self, make: Callable[[Any, Overlay], Overlay]) -> routing.RoutingState:
        """The snapshot a change would produce, without applying it (dry runs)."""
        config, _ = self._validated(make(self.desired.document(), self.desired.overlay))
        return routing.build(config, self.generation + 1, routing.plan(config, self.desired.tables))

    def rollback(self, who: str, generation: int, if_match: int | None = None) -> Entry:
        """A new generation that routes exactly as ``generation`` did: its services, versions, rules,
        weights and flags, and its very bucket tables, whatever the source says now."""
        self.desired.check_if_match(if_match)
        pinned, tables = self.desired.rollback_overlay(generation)
        return self._commit(who, f"rollback to generation {generation}", pinned, tables)

    def reset(self, who: str, services: list[str] | None, flags: list[str] | None,
              if_match: int | None = None) -> Entry:
        """Drop admin changes (of the given services and flags; None: all of that kind) so the source
        shows through again, as a new generation."""
        self.desired.check_if_match(if_match)
        names = ["all services"] if services is None else [f"service {name}" for name in services]
        names += ["all flags"] if flags is None else [f"flag {key}" for key in flags]
        return self._commit(who, "reset " + ", ".join(names), overlay.reset(self.desired.overlay, services, flags))

    def reload(self, who: str) -> Entry:
        """The source read again and validated by itself, then the same overlay on top. A source that
        is bad by itself is refused even if the overlay would hide the bad part."""
        before = self.desired
        try:
            try:
                self.desired = before.with_file(self.read_source())
            except ConfigError as exc:
                raise ChangeError(422, exc.message, exc.path or "config file") from None
            entry = self._commit(who, f"reload {self.name}", self.desired.overlay)
        except ChangeError:
            self.desired = before
            self.reloads["failure"] += 1
            raise
        self.reloads["success"] += 1
        for where, held in self.desired.overrides().items():
            log.warning("%s: admin changes since generation %d shadow the file (%s); `turnout reset` drops them",
                        where, held["since"], ", ".join(held["parts"]))
        return entry

    def discover(self, who: str, discovered: Discovered) -> Entry | None:
        """A provider's new snapshot of what it found, as the discovery layer: a new generation if the
        effective routing changes (None if not). One that does not validate (a version the admin
        overlay's rules do not know, say) is refused like any change, and the layer stays as it was."""
        before = self.desired
        candidate = before.with_discovered(discovered)
        if candidate.document() == before.document():
            self.desired = candidate  # nothing routes differently: keep the layer, make no generation
            return None
        self.desired = candidate
        try:
            return self._commit(who, "discovery: " + (", ".join(sorted(discovered.services)) or "nothing found"),
                                candidate.overlay)
        except ChangeError:
            self.desired = before
            raise

    def reload_or_say_why(self, who: str, source: str) -> Entry | None:
        """``reload`` for a signal: a refusal is one log line naming ``source`` and the field (the old
        generation serves on), and None."""
        try:
            return self.reload(who)
        except ChangeError as exc:
            log.error("reload refused, still serving generation %d: %s", self.generation,
                      ": ".join(part for part in (source, exc.field, exc.message) if part))
            return None

    def overrides(self) -> dict[str, dict[str, Any]]:
        return self.desired.overrides()

    def diff(self, before: int, after: int) -> list[dict[str, Any]]:
        return self.desired.diff(before, after)

    # -- internals

    def _validated(self, changes: Overlay) -> tuple[Config, Any]:
        """The config of ``changes`` over the source, and its effective document."""
        document = self.desired.document(changes)
        try:
            return self.validate(document), document
        except ConfigError as exc:
            raise ChangeError(422, exc.message, exc.path) from None

    def _commit(self, who: str, what: str, changes: Overlay, plan_from: buckets.Tables | None = None) -> Entry:
        config, document = self._validated(changes)
        self._commit_valid(who, what, changes, config, document, plan_from)
        return self.desired.history[-1]

    def _commit_valid(self, who: str, what: str, changes: Overlay, config: Config, document: Any,
                      plan_from: buckets.Tables | None) -> Snapshot:
        """Persist, then keep, then ship. Nothing changes unless the state was written."""
        desired, entry, snapshot = self.desired.commit(who, what, changes, config, document, self.clock(), plan_from)
        try:
            self.persist(desired.saved())
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise ChangeError(507, f"cannot write the state file{where}: {exc.strerror or exc}; nothing was changed",
                              "state file") from None
        self.desired = desired
        if entry.differs:
            log.info("generation %d: %s differ from %s (admin changes)", entry.generation, ", ".join(entry.differs),
                     self.name)
        self.apply(config, snapshot)
        return snapshot


def _nobody(config: Config, snapshot: Snapshot) -> None:
    """Before the receivers exist (boot), the caller of ``boot`` hands the snapshot over itself."""
