"""The proxy's own control: the writer of its routing state (``core.writer.Writer``) with the proxy's
I/O — the config file as the source (validated by itself, certificate files included), and the state
file ``<config>.state.json`` beside it, so that admin changes survive a restart and every sticky user
stays on their version."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turnout.core.errors import ConfigError
from turnout.core.model import Config
from turnout.core.reader import from_document, read_document
from turnout.core.wire import Snapshot
from turnout.core.writer import Writer
from turnout.io import statefile

from . import tls

__all__ = ["Control"]

log = logging.getLogger("turnout")


class Control(Writer):
    def __init__(self, config_path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.config_path = Path(config_path)
        self.source = str(self.config_path)
        self.state_path = self.config_path.with_name(self.config_path.name + ".state.json")
        super().__init__(self.config_path.name, self._read_file, self._validate,
                         lambda saved: statefile.write(self.state_path, saved), clock)

    def boot(self, saved: dict[str, Any] | None = None, who: str = "proxy") -> tuple[Config, Snapshot]:
        """The first generation of this run (see ``Writer.boot``), from the saved state file.
        ``ValueError`` / ``OSError`` for a state file that cannot be read."""
        for left in statefile.clean(self.state_path):
            log.info("removed %s, left by a write that never finished", left.name)
        return super().boot(statefile.read(self.state_path), who)

    def _read_file(self) -> Any:
        """The file's document, validated on its own (with its certificate files)."""
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(self.source, "", f"cannot read file: {exc.strerror}") from None
        document = read_document(text, self.source)
        self._validate(document)
        return document

    def _validate(self, document: Any) -> Config:
        config = from_document(document, self.source)
        tls.check(config)
        return config
