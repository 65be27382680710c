"""``turnout proxy`` (also ``python -m proxy``): the data plane's entry point."""

from __future__ import annotations

import argparse

from turnout.io import logs

DEFAULT_CONFIG = "config/turnout.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout proxy", description="Turnout's traffic-splitting proxy.")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    parser.add_argument("--log-level", choices=logs.LEVELS, help="default $TURNOUT_LOG_LEVEL or info")
    parser.add_argument("--log-format", choices=logs.FORMATS, help="text (default $TURNOUT_LOG_FORMAT or text) or "
                        "json: one JSON object per line")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    logs.setup("turnout", args.log_level, args.log_format)
    from .server import serve  # imported after the arguments: --help needs no event loop machinery

    return serve(args.config, args.workers)
