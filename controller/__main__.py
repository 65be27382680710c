"""``python -m controller --config FILE`` (also ``turnout controller``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .server import serve

DEFAULT_CONFIG = "config/controller.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout controller", description="Turnout's release controller.")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("TURNOUT_LOG_LEVEL", "INFO"),
                        format="turnout-controller[%(process)d] %(levelname)s %(message)s", stream=sys.stderr)
    return serve(args.config)


if __name__ == "__main__":
    sys.exit(main())
