"""The proxy's own control: the file config plus the admin overlay, every change as a new generation,
the history of generations, and the state file that makes admin changes survive a restart.

Every change takes the same path: build the new overlay (``overlay``), merge it over the file's document,
validate the result as a whole config (so errors name the field, as for the file), apply it to the
workers (which build the snapshot, generation + 1), then record and persist. A change that fails at any
step changes nothing. The state file (``<config>.state.json``) holds the overlay, the last generations
(who, when, what, and the effective document, for diff and rollback) and the bucket tables, so that a
restart rebuilds the same snapshot and keeps every sticky user on their version.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import statefile, tls
from .core import buckets, overlay
from .core.model import Config, ConfigError
from .core.overlay import ChangeError, Overlay
from .core.reader import from_document, read_document
from .core.routing import RoutingState

__all__ = ["Control", "Entry", "Tables", "decode_tables", "encode_tables"]

HISTORY = 50  # generations kept for audit, diff and rollback

Tables = dict[tuple[str, str], buckets.Table]


@dataclass(frozen=True, slots=True)
class Entry:
    generation: int
    at: float  # Unix time
    who: str
    what: str
    overlay: Overlay
    document: Any  # the effective config document of that generation
    tables: list[Any]  # its bucket tables, encoded: a rollback restores them exactly

    def summary(self) -> dict[str, Any]:
        return {"generation": self.generation, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
                "who": self.who, "what": self.what}


class Control:
    """Owns the desired state of one proxy. ``apply`` hands a validated config (the document it came
    from, and tables that must be used as they are, if any) to the workers and returns the snapshot
    they now serve."""

    def __init__(self, config_path: str | Path, apply: Callable[[Config, Any, Tables | None], RoutingState],
                 clock: Callable[[], float] = time.time) -> None:
        self.config_path = Path(config_path)
        self.state_path = self.config_path.with_name(self.config_path.name + ".state.json")
        self.apply = apply
        self.clock = clock
        self.overlay: Overlay = {}
        self.history: list[Entry] = []
        self.generation = 0
        self.tables: Tables = {}

    # -- boot

    def boot(self) -> tuple[Config, Any]:
        """The config (and document) to start with: the file merged with the saved overlay."""
        saved = statefile.read(self.state_path)
        if saved is not None:
            self.overlay = saved.get("overlay", {})
            self.generation = int(saved.get("generation", 0))
            self.history = [Entry(**entry) for entry in saved.get("history", [])]
            self.tables = decode_tables(saved.get("tables", []))
        config, document = self._effective(self.overlay)
        self.generation += 1
        return config, document

    def booted(self, state: RoutingState) -> None:
        """Record the boot once the workers serve it."""
        self._record(state, "proxy", "start", self.overlay, self._document(self.overlay))

    # -- changes

    def change(self, who: str, what: str, make: Callable[[Any, Overlay], Overlay],
               if_match: int | None = None, tables: Tables | None = None) -> Entry:
        if if_match is not None and if_match != self.generation:
            raise ChangeError(409, f"generation {if_match} is stale: the current generation is {self.generation}",
                              "If-Match")
        try:
            document = self._document(self.overlay)
        except ConfigError as exc:
            raise ChangeError(500, str(exc), "config file") from None
        changed = make(document, self.overlay)
        return self._commit(who, what, changed, tables)

    def preview(self, make: Callable[[Any, Overlay], Overlay]) -> Config:
        """The validated config a change would produce, without applying it (dry runs)."""
        try:
            document = self._document(self.overlay)
            config, _ = self._effective(make(document, self.overlay))
        except ConfigError as exc:
            raise ChangeError(422, exc.message, exc.path) from None
        return config

    def rollback(self, who: str, generation: int, if_match: int | None = None) -> Entry:
        entry = next((e for e in self.history if e.generation == generation), None)
        if entry is None:
            kept = ", ".join(str(e.generation) for e in self.history)
            raise ChangeError(404, f"generation {generation} is not kept (kept: {kept})", "generation")
        return self.change(who, f"rollback to generation {generation}", lambda _doc, _old: entry.overlay, if_match,
                           tables=decode_tables(entry.tables))

    def reload_file(self, who: str = "signal") -> Entry:
        """SIGHUP (or the admin API): the new file, with the same overlay on top."""
        return self._commit(who, f"reload {self.config_path.name}", self.overlay)

    def diff(self, before: int, after: int) -> list[dict[str, Any]]:
        documents = {e.generation: e.document for e in self.history}
        for generation in (before, after):
            if generation not in documents:
                raise ChangeError(404, f"generation {generation} is not kept", "generation")
        return overlay.diff(documents[before], documents[after])

    # -- internals

    def _document(self, changes: Overlay) -> Any:
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(self.config_path), "", f"cannot read file: {exc.strerror}") from None
        merged, _ = overlay.merge(read_document(text, str(self.config_path)), changes)
        return merged

    def _effective(self, changes: Overlay) -> tuple[Config, Any]:
        document = self._document(changes)
        config = from_document(document, str(self.config_path))
        tls.check(config)
        return config, document

    def _commit(self, who: str, what: str, changes: Overlay, tables: Tables | None = None) -> Entry:
        try:
            config, document = self._effective(changes)
        except ConfigError as exc:
            raise ChangeError(422, exc.message, exc.path) from None
        state = self.apply(config, document, tables)
        self.overlay = changes
        return self._record(state, who, what, changes, document)

    def _record(self, state: RoutingState, who: str, what: str, changes: Overlay, document: Any) -> Entry:
        self.generation = state.generation
        self.tables = state.tables()
        entry = Entry(state.generation, self.clock(), who, what, copy.deepcopy(changes), document,
                      encode_tables(self.tables))
        self.history = [*self.history, entry][-HISTORY:]
        statefile.write(self.state_path, {
            "generation": self.generation,
            "overlay": self.overlay,
            "history": [{"generation": e.generation, "at": e.at, "who": e.who, "what": e.what,
                         "overlay": e.overlay, "document": e.document, "tables": e.tables} for e in self.history],
            "tables": encode_tables(self.tables),
        })
        return entry


def encode_tables(tables: Tables) -> list[Any]:
    return [[service, rule, buckets.encode(table.owners), buckets.encode(table.order)]
            for (service, rule), table in tables.items()]


def decode_tables(encoded: list[Any]) -> Tables:
    return {(service, rule): buckets.Table(buckets.decode(owners), buckets.decode(order))
            for service, rule, owners, order in encoded}
