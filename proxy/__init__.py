"""Turnout's data plane: a traffic-splitting reverse proxy (see docs/architecture.md)."""

__version__ = "0.1.0"
