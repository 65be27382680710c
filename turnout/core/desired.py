"""The writer's desired state, as one immutable value: the loaded file's document, the discovered
layer over it (``discovery``: containers found by a provider), the admin overlay on top (and since
when each of its entries holds), the generations kept for audit, diff and rollback, and the current
bucket tables.

``Desired.commit`` is the writer's whole step for one change, minus the I/O around it: number the
generation once, plan its tables once (``routing.plan``), record who, when and what, and give back the
next state, its history entry and the ``wire.Snapshot`` to ship. The shell validates the config before
(certificate files are I/O), persists ``saved()`` after, and only then replaces its state and ships
the snapshot: a change that cannot be persisted changes nothing.

Pure: time comes in as ``at``; nothing here reads a file or the clock.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Any

from . import buckets, overlay, routing
from .discovery import Discovered
from .discovery import merge as merge_discovered
from .errors import ChangeError
from .model import Config
from .overlay import Overlay
from .wire import Snapshot

__all__ = ["HISTORY", "Desired", "Entry"]

HISTORY = 50  # generations kept for audit, diff and rollback


@dataclass(frozen=True, slots=True)
class Entry:
    generation: int
    at: float  # Unix time
    who: str
    what: str
    overlay: Overlay
    document: Any  # the effective config document of that generation
    tables: list[Any]  # its bucket tables, encoded: a rollback restores them exactly

    @property
    def differs(self) -> list[str]:
        """What of it the file did not say: its overlay's entries ("services.shop", "flags.beta")."""
        return list(overlay.shadows(self.overlay))

    def summary(self) -> dict[str, Any]:
        summary = {"generation": self.generation, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
                   "who": self.who, "what": self.what}
        differs = self.differs
        return {**summary, "differs_from_file": differs} if differs else summary

    def saved(self) -> dict[str, Any]:
        return {"generation": self.generation, "at": self.at, "who": self.who, "what": self.what,
                "overlay": self.overlay, "document": self.document, "tables": self.tables}


@dataclass(frozen=True, slots=True)
class Desired:
    file_document: Any = None  # the file as last loaded (boot or reload); admin changes build on it
    overlay: Overlay = field(default_factory=dict)
    since: dict[str, int] = field(default_factory=dict)  # "services.demo" / "flags.x" -> generation it began
    history: tuple[Entry, ...] = ()
    generation: int = 0
    tables: buckets.Tables = field(default_factory=dict)
    discovered: Discovered = field(default_factory=lambda: Discovered({}))

    @classmethod
    def restored(cls, saved: dict[str, Any] | None, file_document: Any) -> Desired:
        """The state a state file holds (``saved()``), on top of the file as loaded now."""
        if saved is None:
            return cls(file_document)
        return cls(file_document, saved.get("overlay", {}), saved.get("since", {}),
                   tuple(Entry(**entry) for entry in saved.get("history", [])), int(saved.get("generation", 0)),
                   buckets.decode_tables(saved.get("tables", [])), Discovered.restored(saved.get("discovered")))

    def saved(self) -> dict[str, Any]:
        """What the state file keeps (plain JSON data)."""
        return {"generation": self.generation, "overlay": self.overlay, "since": self.since,
                "history": [entry.saved() for entry in self.history],
                "tables": buckets.encode_tables(self.tables), "discovered": self.discovered.saved()}

    def below(self) -> Any:
        """What admin changes lie over: the loaded file with the discovered layer on it."""
        return merge_discovered(self.file_document, self.discovered)

    def document(self, changes: Overlay | None = None) -> Any:
        """The effective document: the layers below with ``changes`` (default: the overlay) on top."""
        return overlay.merge(self.below(), self.overlay if changes is None else changes)[0]

    def with_discovered(self, discovered: Discovered) -> Desired:
        return replace(self, discovered=discovered)

    def with_file(self, file_document: Any) -> Desired:
        return replace(self, file_document=file_document)

    def check_if_match(self, if_match: int | None) -> None:
        if if_match is not None and if_match != self.generation:
            raise ChangeError(409, f"generation {if_match} is stale: the current generation is {self.generation}",
                              "If-Match")

    def entry(self, generation: int) -> Entry:
        found = next((e for e in self.history if e.generation == generation), None)
        if found is None:
            kept = ", ".join(str(e.generation) for e in self.history)
            raise ChangeError(404, f"generation {generation} is not kept (kept: {kept})", "generation")
        return found

    def rollback_overlay(self, generation: int) -> tuple[Overlay, buckets.Tables]:
        """The overlay and the tables that route exactly as ``generation`` did, whatever the file says now."""
        entry = self.entry(generation)
        return overlay.pin(self.below(), entry.document), buckets.decode_tables(entry.tables)

    def commit(self, who: str, what: str, changes: Overlay, config: Config, document: Any, at: float,
               plan_from: buckets.Tables | None = None) -> tuple[Desired, Entry, Snapshot]:
        """The next generation for ``changes`` (``config``: their validated effective config, from
        ``document``): numbered and planned once. Nothing changes until the caller keeps the result."""
        generation = self.generation + 1
        tables = routing.plan(config, self.tables if plan_from is None else plan_from)
        since = {where: self.since.get(where, generation) if _same_entry(self.overlay, changes, where) else generation
                 for where in overlay.shadows(changes)}
        entry = Entry(generation, at, who, what, copy.deepcopy(changes), document, buckets.encode_tables(tables))
        desired = Desired(self.file_document, changes, since, (*self.history, entry)[-HISTORY:], generation, tables,
                          self.discovered)
        return desired, entry, Snapshot(generation, config.source, document, tables)

    def overrides(self) -> dict[str, dict[str, Any]]:
        """Each overlay entry, the parts of the file it hides, and the generation since when it holds."""
        return {where: {"parts": parts, "since": self.since.get(where, 0)}
                for where, parts in overlay.shadows(self.overlay).items()}

    def diff(self, before: int, after: int) -> list[dict[str, Any]]:
        return overlay.diff(self.entry(before).document, self.entry(after).document)


_ABSENT = object()


def _same_entry(before: Overlay, after: Overlay, where: str) -> bool:
    """Whether the overlay entry named ``where`` ("services.x" / "flags.y") is unchanged."""
    kind, _, name = where.partition(".")
    if kind == "flags":
        before, after = before.get(overlay.FLAGS) or {}, after.get(overlay.FLAGS) or {}
    return bool(before.get(name, _ABSENT) == after.get(name))
