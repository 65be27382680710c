"""The proxy's own control, the writer of its routing state: the loaded file, the admin overlay on top,
every change as a new generation, the history of generations, and the state file.

Every change takes the same path (``_commit``):
1. build the new overlay (``core.overlay``, pure) and merge it over the *loaded* file's document
   (the file is read only at boot and on reload, never by an admin change);
2. validate the result as a whole config, so errors name the field as for the file;
3. compute the generation once: its number, and its bucket tables planned from the previous ones
   (``routing.plan``; an exact rollback plans from the generation's own tables, which gives them back);
4. persist it in the state file; a change that cannot be written is refused and changes nothing;
5. only then hand the ``wire.Snapshot`` to the receivers (the worker, or every worker of a supervisor),
   which apply exactly that or refuse it and say why.

The state file (``<config>.state.json``) holds the overlay, since when each of its entries has shadowed
the file, the last generations (who, when, what, the effective document and the tables, for diff and
rollback) and the current tables, so a restart rebuilds the same snapshot and keeps every sticky user on
their version.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import statefile, tls
from .core import buckets, overlay, routing
from .core.model import Config, ConfigError
from .core.overlay import ChangeError, Overlay
from .core.reader import from_document, read_document
from .core.wire import Snapshot

__all__ = ["Control", "Entry"]

log = logging.getLogger("turnout")

HISTORY = 50  # generations kept for audit, diff and rollback

Apply = Callable[[Config, Snapshot], None]


@dataclass(frozen=True, slots=True)
class Entry:
    generation: int
    at: float  # Unix time
    who: str
    what: str
    overlay: Overlay
    document: Any  # the effective config document of that generation
    tables: list[Any]  # its bucket tables, encoded: a rollback restores them exactly
    differs: tuple[str, ...] = ()  # what of it the file did not say (overlay entries), for the answer

    def summary(self) -> dict[str, Any]:
        summary = {"generation": self.generation, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
                   "who": self.who, "what": self.what}
        return {**summary, "differs_from_file": list(self.differs)} if self.differs else summary

    def saved(self) -> dict[str, Any]:
        return {"generation": self.generation, "at": self.at, "who": self.who, "what": self.what,
                "overlay": self.overlay, "document": self.document, "tables": self.tables}


class Control:
    """Owns the desired state of one proxy; ``apply`` hands each new snapshot to the receivers."""

    def __init__(self, config_path: str | Path, apply: Apply | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config_path = Path(config_path)
        self.source = str(self.config_path)
        self.state_path = self.config_path.with_name(self.config_path.name + ".state.json")
        self.apply: Apply = apply or _not_serving_yet
        self.clock = clock
        self.file_document: Any = None  # the file as last loaded (boot or reload)
        self.overlay: Overlay = {}
        self.since: dict[str, int] = {}  # overlay entry ("services.demo", "flags.x") -> generation it began
        self.history: list[Entry] = []
        self.generation = 0
        self.tables: buckets.Tables = {}
        self.config: Config | None = None
        self.reloads = {"success": 0, "failure": 0}  # file reloads by result, counted once each

    # -- boot

    def boot(self) -> tuple[Config, Snapshot]:
        """The first generation of this run: the file (valid by itself) with the saved overlay on top,
        its tables planned from the saved ones, persisted before anything serves it.
        ``ConfigError`` for a bad file; ``ValueError`` for an unreadable state file; ``OSError`` when
        the state file cannot be written."""
        saved = statefile.read(self.state_path)
        if saved is not None:
            self.overlay = saved.get("overlay", {})
            self.since = saved.get("since", {})
            self.generation = int(saved.get("generation", 0))
            self.history = [Entry(**entry) for entry in saved.get("history", [])]
            self.tables = buckets.decode_tables(saved.get("tables", []))
        self.file_document = self._read_file()
        config, document = self._effective(self.overlay)
        return config, self._commit_unchecked("proxy", "start", self.overlay, config, document, self.tables)

    # -- changes

    def change(self, who: str, what: str, make: Callable[[Any, Overlay], Overlay],
               if_match: int | None = None) -> Entry:
        self._check_if_match(if_match)
        return self._commit(who, what, make(self.document(), self.overlay))

    def document(self) -> Any:
        """The effective document now: the loaded file with the overlay on top."""
        return overlay.merge(self.file_document, self.overlay)[0]

    def preview(self, make: Callable[[Any, Overlay], Overlay]) -> routing.RoutingState:
        """The snapshot a change would produce, without applying it (dry runs)."""
        config, _ = self._validated(make(self.document(), self.overlay))
        return routing.build(config, self.generation + 1, routing.plan(config, self.tables))

    def rollback(self, who: str, generation: int, if_match: int | None = None) -> Entry:
        """A new generation that routes exactly as ``generation`` did: its services, versions, rules,
        weights and flags, and its very bucket tables, whatever the file says now."""
        self._check_if_match(if_match)
        entry = next((e for e in self.history if e.generation == generation), None)
        if entry is None:
            kept = ", ".join(str(e.generation) for e in self.history)
            raise ChangeError(404, f"generation {generation} is not kept (kept: {kept})", "generation")
        pinned = overlay.pin(self.file_document, entry.document)
        return self._commit(who, f"rollback to generation {generation}", pinned, buckets.decode_tables(entry.tables))

    def reset(self, who: str, services: list[str] | None, flags: list[str] | None,
              if_match: int | None = None) -> Entry:
        """Drop admin changes (of the given services and flags; None: all of that kind) so the file shows
        through again, as a new generation."""
        self._check_if_match(if_match)
        names = ["all services"] if services is None else [f"service {name}" for name in services]
        names += ["all flags"] if flags is None else [f"flag {key}" for key in flags]
        return self._commit(who, "reset " + ", ".join(names), overlay.reset(self.overlay, services, flags))

    def reload_file(self, who: str = "signal") -> Entry:
        """SIGHUP (or the admin API): the file read again and validated by itself, then the same overlay
        on top. A file that is bad by itself is refused even if the overlay would hide the bad part."""
        try:
            try:
                document = self._read_file()
            except ConfigError as exc:
                raise ChangeError(422, exc.message, exc.path or "config file") from None
            previous, self.file_document = self.file_document, document
            try:
                entry = self._commit(who, f"reload {self.config_path.name}", self.overlay)
            except ChangeError:
                self.file_document = previous
                raise
        except ChangeError:
            self.reloads["failure"] += 1
            raise
        self.reloads["success"] += 1
        for where, parts in self.shadowed().items():
            log.warning("%s: admin changes since generation %d shadow the file (%s); `turnout reset` drops them",
                        where, self.since.get(where, 0), ", ".join(parts))
        return entry

    def shadowed(self) -> dict[str, list[str]]:
        """What the overlay hides of the file, by ``services.NAME`` / ``flags.KEY``."""
        return overlay.shadows(self.overlay)

    def overrides(self) -> dict[str, dict[str, Any]]:
        """For the state view: each overlay entry, its parts and the generation since when it holds."""
        return {where: {"parts": parts, "since": self.since.get(where, 0)} for where, parts in self.shadowed().items()}

    def diff(self, before: int, after: int) -> list[dict[str, Any]]:
        documents = {e.generation: e.document for e in self.history}
        for generation in (before, after):
            if generation not in documents:
                raise ChangeError(404, f"generation {generation} is not kept", "generation")
        return overlay.diff(documents[before], documents[after])

    # -- internals

    def _check_if_match(self, if_match: int | None) -> None:
        if if_match is not None and if_match != self.generation:
            raise ChangeError(409, f"generation {if_match} is stale: the current generation is {self.generation}",
                              "If-Match")

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
        document, _ = overlay.merge(self.file_document, changes)
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
        self._commit_unchecked(who, what, changes, config, document, self.tables if plan_from is None else plan_from)
        return self.history[-1]

    def _commit_unchecked(self, who: str, what: str, changes: Overlay, config: Config, document: Any,
                          plan_from: buckets.Tables) -> Snapshot:
        """Number and plan the generation, persist it, then ship it. Nothing in memory changes unless
        the state file was written."""
        generation = self.generation + 1
        tables = routing.plan(config, plan_from)
        since = {where: self.since.get(where, generation) if _same_entry(self.overlay, changes, where) else generation
                 for where in overlay.shadows(changes)}
        entry = Entry(generation, self.clock(), who, what, copy.deepcopy(changes), document,
                      buckets.encode_tables(tables), tuple(overlay.shadows(changes)))
        history = [*self.history, entry][-HISTORY:]
        try:
            statefile.write(self.state_path, {"generation": generation, "overlay": changes, "since": since,
                                              "history": [e.saved() for e in history],
                                              "tables": entry.tables})
        except OSError as exc:
            raise ChangeError(507, f"cannot write the state file {self.state_path}: {exc.strerror}; "
                              "nothing was changed", "state file") from None
        self.generation, self.tables, self.overlay, self.since = generation, tables, changes, since
        self.history, self.config = history, config
        snapshot = Snapshot(generation, self.source, document, tables)
        if entry.differs:
            log.info("generation %d: %s differ from %s (admin changes)", generation, ", ".join(entry.differs),
                     self.config_path.name)
        self.apply(config, snapshot)
        return snapshot


def _same_entry(before: Overlay, after: Overlay, where: str) -> bool:
    """Whether the overlay entry named ``where`` ("services.x" / "flags.y") is unchanged."""
    kind, _, name = where.partition(".")
    if kind == "flags":
        before, after = before.get(overlay.FLAGS) or {}, after.get(overlay.FLAGS) or {}
    return bool(before.get(name, _ABSENT) == after.get(name))


_ABSENT = object()


def _not_serving_yet(config: Config, snapshot: Snapshot) -> None:
    """Before the receivers exist (boot), a snapshot is handed over by the caller of ``boot``."""
