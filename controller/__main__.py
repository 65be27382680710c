"""``python -m controller --config FILE`` (also ``turnout controller``)."""

from __future__ import annotations

import argparse
import sys

from proxy.core import logs

from .server import serve

DEFAULT_CONFIG = "config/controller.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout controller", description="Turnout's release controller.")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    parser.add_argument("--log-level", choices=logs.LEVELS, help="default $TURNOUT_LOG_LEVEL or info")
    parser.add_argument("--log-format", choices=logs.FORMATS, help="default $TURNOUT_LOG_FORMAT or text")
    args = parser.parse_args(argv)
    logs.setup("turnout-controller", args.log_level, args.log_format)
    return serve(args.config)


if __name__ == "__main__":
    sys.exit(main())
