"""The ``turnout`` command.

    turnout proxy  [--config FILE] [--workers N]   serve (also: python -m proxy)
    turnout check  [--config FILE]                 validate a config file and exit
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import config as config_module

__all__ = ["main"]

DEFAULT_CONFIG = "config/turnout.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout", description="Traffic-splitting reverse proxy.")
    sub = parser.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="run the proxy")
    proxy.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    proxy.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("--config", default=DEFAULT_CONFIG)
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=os.environ.get("TURNOUT_LOG_LEVEL", "INFO"),
        format="turnout[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.command == "check":
        try:
            cfg = config_module.load(args.config)
        except config_module.ConfigError as exc:
            print(f"turnout: {exc}", file=sys.stderr)
            return 2
        print(f"{args.config}: ok ({len(cfg.services)} services)")
        return 0
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    from .server import serve  # imported late so that `check` needs no event loop machinery

    return serve(args.config, args.workers)


def proxy_main() -> int:
    """``python -m proxy``: the proxy subcommand."""
    return main(["proxy", *sys.argv[1:]])
