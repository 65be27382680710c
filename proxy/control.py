"""The proxy's own control, the writer of its routing state: the I/O around ``core.history.Desired``.

Every change takes the same path (``_commit``):
1. build the new overlay (``core.overlay``, pure) and merge it over the *loaded* file's document
   (the file is read only at boot and on reload, never by an admin change);
2. validate the result as a whole config (and its certificate files), so errors name the field;
3. ``Desired.commit``: number the generation and plan its bucket tables once (an exact rollback plans
   from the generation's own tables, which gives them back);
4. persist it in the state file; a change that cannot be written is refused and changes nothing;
5. only then keep the new state and hand the ``wire.Snapshot`` to the receivers (the worker, or every
   worker of a supervisor), which apply exactly that or refuse it and say why.

The state file is ``<config>.state.json`` beside the config (see ``Desired.saved``), so a restart
rebuilds the same snapshot and keeps every sticky user on their version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import tls
from .core import buckets, overlay, routing, statefile
from .core.history import Desired, Entry
from .core.model import Config, ConfigError
from .core.overlay import ChangeError, Overlay
from .core.reader import from_document, read_document
from .core.wire import Snapshot

__all__ = ["Control"]

log = logging.getLogger("turnout")

Apply = Callable[[Config, Snapshot], None]


class Control:
    """Owns the desired state of one proxy; ``apply`` hands each new snapshot to the receivers."""

    def __init__(self, config_path: str | Path, apply: Apply | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config_path = Path(config_path)
        self.source = str(self.config_path)
        self.state_path = self.config_path.with_name(self.config_path.name + ".state.json")
        self.apply: Apply = apply or _not_serving_yet
        self.clock = clock
        self.desired = Desired()
        self.reloads = {"success": 0, "failure": 0}  # file reloads by result, counted once each

    @property
    def generation(self) -> int:
        return self.desired.generation

    @property
    def history(self) -> tuple[Entry, ...]:
        return self.desired.history

    # -- boot

    def boot(self) -> tuple[Config, Snapshot]:
        """The first generation of this run: the file (valid by itself) with the saved overlay on top,
        its tables planned from the saved ones, persisted before anything serves it.
        ``ConfigError`` for a bad file; ``ValueError`` / ``OSError`` for an unreadable state file;
        ``ChangeError`` (507) when the state file cannot be written."""
        for left in statefile.clean(self.state_path):
            log.info("removed %s, left by a write that never finished", left.name)
        saved = statefile.read(self.state_path)
        self.desired = Desired.restored(saved, self._read_file())
        config, document = self._effective(self.desired.overlay)
        snapshot = self._commit_valid("proxy", "start", self.desired.overlay, config, document, None)
        return config, snapshot

    # -- changes

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
        weights and flags, and its very bucket tables, whatever the file says now."""
        self.desired.check_if_match(if_match)
        pinned, tables = self.desired.rollback_overlay(generation)
        return self._commit(who, f"rollback to generation {generation}", pinned, tables)

    def reset(self, who: str, services: list[str] | None, flags: list[str] | None,
              if_match: int | None = None) -> Entry:
        """Drop admin changes (of the given services and flags; None: all of that kind) so the file shows
        through again, as a new generation."""
        self.desired.check_if_match(if_match)
        names = ["all services"] if services is None else [f"service {name}" for name in services]
        names += ["all flags"] if flags is None else [f"flag {key}" for key in flags]
        return self._commit(who, "reset " + ", ".join(names), overlay.reset(self.desired.overlay, services, flags))

    def reload_file(self, who: str = "signal") -> Entry:
        """SIGHUP (or the admin API): the file read again and validated by itself, then the same overlay
        on top. A file that is bad by itself is refused even if the overlay would hide the bad part."""
        before = self.desired
        try:
            try:
                self.desired = before.with_file(self._read_file())
            except ConfigError as exc:
                raise ChangeError(422, exc.message, exc.path or "config file") from None
            entry = self._commit(who, f"reload {self.config_path.name}", self.desired.overlay)
        except ChangeError:
            self.desired = before
            self.reloads["failure"] += 1
            raise
        self.reloads["success"] += 1
        for where, entry_state in self.desired.overrides().items():
            log.warning("%s: admin changes since generation %d shadow the file (%s); `turnout reset` drops them",
                        where, entry_state["since"], ", ".join(entry_state["parts"]))
        return entry

    def overrides(self) -> dict[str, dict[str, Any]]:
        return self.desired.overrides()

    def diff(self, before: int, after: int) -> list[dict[str, Any]]:
        return self.desired.diff(before, after)

    # -- internals

    def _read_file(self) -> Any:
        """The file's document, validated on its own (with its certificate files)."""
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(self.source, "", f"cannot read file: {exc.strerror}") from None
        document = read_document(text, self.source)
        tls.check(from_document(document, self.source))
        return document

    def _effective(self, changes: Overlay) -> tuple[Config, Any]:
        document = self.desired.document(changes)
        config = from_document(document, self.source)
        tls.check(config)
        return config, document

    def _validated(self, changes: Overlay) -> tuple[Config, Any]:
        try:
            return self._effective(changes)
        except ConfigError as exc:
            raise ChangeError(422, exc.message, exc.path) from None

    def _commit(self, who: str, what: str, changes: Overlay, plan_from: buckets.Tables | None = None) -> Entry:
        config, document = self._validated(changes)
        self._commit_valid(who, what, changes, config, document, plan_from)
        return self.desired.history[-1]

    def _commit_valid(self, who: str, what: str, changes: Overlay, config: Config, document: Any,
                      plan_from: buckets.Tables | None) -> Snapshot:
        """Persist, then keep, then ship. Nothing changes unless the state file was written."""
        desired, entry, snapshot = self.desired.commit(who, what, changes, config, document, self.clock(), plan_from)
        try:
            statefile.write(self.state_path, desired.saved())
        except OSError as exc:
            raise ChangeError(507, f"cannot write the state file {self.state_path}: {exc.strerror}; "
                              "nothing was changed", "state file") from None
        self.desired = desired
        if entry.differs:
            log.info("generation %d: %s differ from %s (admin changes)", entry.generation, ", ".join(entry.differs),
                     self.config_path.name)
        self.apply(config, snapshot)
        return snapshot


def _not_serving_yet(config: Config, snapshot: Snapshot) -> None:
    """Before the receivers exist (boot), the caller of ``boot`` hands the snapshot over itself."""
