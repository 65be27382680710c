"""``turnout controller`` (also ``python -m controller``): the control plane's entry point."""

from __future__ import annotations

import argparse

from turnout.io import logs

DEFAULT_CONFIG = "config/controller.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout controller", description="Turnout's release controller.")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    parser.add_argument("--log-level", choices=logs.LEVELS, help="default $TURNOUT_LOG_LEVEL or info")
    parser.add_argument("--log-format", choices=logs.FORMATS, help="default $TURNOUT_LOG_FORMAT or text")
    args = parser.parse_args(argv)
    logs.setup("turnout-controller", args.log_level, args.log_format)
    from .server import serve  # imported after the arguments, as the proxy does

    return serve(args.config)

