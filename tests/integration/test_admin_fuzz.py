"""A schema-driven fuzz of the admin API from its own OpenAPI document: no input makes it fail (5xx)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings

from turnout.api.openapi import DOCUMENT

from ..conftest import ProxyProcess

schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def admin_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    path = directory / "turnout.yaml"
    path.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "services": {"shop": {"versions": {"v1": ["127.0.0.1:9"], "v2": ["127.0.0.1:9"]}, "rules": [
            {"name": "beta", "match": {"headers": {"x-beta": "1"}}, "version": "v2"},
            {"name": "default", "split": {"v1": 90, "v2": 10}, "sticky": {"header": "x-user"}},
        ]}},
    }))
    process = ProxyProcess(path)
    try:
        yield process.admin_url(), (directory / "admin.token").read_text().strip()
    finally:
        process.stop()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_admin_api_fail(case: Any, admin_api: tuple[str, str]) -> None:
    base, token = admin_api
    response = case.call(base_url=base, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
