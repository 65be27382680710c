"""Loading the config file: read it, validate it (``core.reader``) and check the certificate files it
names, so that every failure is a ``ConfigError`` naming the file and the field before anything serves."""

from __future__ import annotations

import os
from pathlib import Path

from turnout.api import tokens
from turnout.core.errors import ConfigError
from turnout.core.model import Config
from turnout.core.reader import parse

from . import tls

__all__ = ["check_tokens", "load"]


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


def check_tokens(config: Config) -> None:
    """What ``turnout proxy`` would refuse about tokens, checked without creating anything (``turnout
    check``): named environment variables must be set, token files that exist must be readable and not
    empty, the controller's token file must exist (the controller makes it; a proxy only reads it)."""
    admin = config.admin
    if admin is not None:
        if admin.token_env is not None or (admin.token_file is not None and Path(admin.token_file).exists()):
            tokens.load(config.source, "admin", admin.token_env, admin.token_file, create=False)
        if admin.flags_token_env is not None and not os.environ.get(admin.flags_token_env):
            raise ConfigError(config.source, "admin.flags_token_env",
                              f"environment variable {admin.flags_token_env} is not set")
    managed = config.controller
    if managed is not None:
        tokens.load(config.source, "controller", managed.token_env, managed.token_file, create=False)
