"""Loading the config file: read it, validate it (``core.reader``) and check the certificate files it
names, so that every failure is a ``ConfigError`` naming the file and the field before anything serves."""

from __future__ import annotations

from pathlib import Path

from . import tls
from .core.model import Config, ConfigError
from .core.reader import parse

__all__ = ["load"]


def load(path: str | Path) -> Config:
    """Read and validate a config file, including the certificate files it names; every failure is a
    ConfigError naming the file and field."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read file: {exc.strerror}") from None
    config = parse(text, source)
    tls.check(config)
    return config
