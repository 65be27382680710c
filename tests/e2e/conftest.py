"""The e2e Docker fixtures, declared once for the directory: a session fixture imported by each test
module is a separate fixture per module, so test_image and test_compose each started an engine and
built the image (about 80 s each); here they share one of each."""

from __future__ import annotations

from ..dockerengine import docker_engine, turnout_image

__all__ = ["docker_engine", "turnout_image"]
