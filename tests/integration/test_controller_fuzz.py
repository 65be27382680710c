"""A schema-driven fuzz of the controller's API from its own OpenAPI document: no input makes it fail
(5xx), rollouts included. The watch is left out here (a long poll holds each call open, and every poll registers a proxy
that changes then wait for); its bad inputs are tested in ``test_controller``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings

from controller.openapi import DOCUMENT

from .test_controller import Controller, controller_config

schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path="/v1/watch")


@pytest.fixture(scope="module")
def controller_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    directory: Path = tmp_path_factory.mktemp("controller-fuzz")
    path = directory / "controller.yaml"
    # With a rollout spec, so that generated starts and commands reach the rollout engine.
    spec = {"steps": [{"setWeight": 10}, {"pause": {}}]}
    path.write_text(yaml.safe_dump({**controller_config({"v1": 100, "v2": 0}), "rollouts": {"shop": spec}}))
    process = Controller(path)
    try:
        yield process.base, (directory / "controller.token").read_text().strip()
    finally:
        process.stop()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_controller_api_fail(case: Any, controller_api: tuple[str, str]) -> None:
    base, token = controller_api
    response = case.call(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
