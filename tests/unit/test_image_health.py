"""The image's health command (``image/health.py``, ``turnout-health`` in the image): which address a
config's process is asked at, and the answers it turns into healthy or not, against real sockets on
127.0.0.1. The image itself, run by Docker's HEALTHCHECK, is in tests/e2e/test_image.py."""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

_spec = importlib.util.spec_from_file_location("turnout_health", Path(__file__).parents[2] / "image" / "health.py")
assert _spec is not None and _spec.loader is not None
health: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(health)


@pytest.mark.parametrize(("config", "expected"), [
    ({"controller": {"listen": "0.0.0.0:9911"}}, ("http", "127.0.0.1", 9911)),
    ({"controller": {}}, ("http", "127.0.0.1", 9911)),
    ({"controller": {"url": "http://127.0.0.1:9911"}, "admin": {"listen": "127.0.0.1:9902"}},
     ("http", "127.0.0.1", 9902)),  # a managed proxy: its own admin API, not its controller
    ({"listen": "0.0.0.0:8080", "admin": {"listen": "127.0.0.2:19901"}}, ("http", "127.0.0.2", 19901)),
    ({"admin": {}}, ("http", "127.0.0.1", 9901)),
    ({"admin": {"listen": "[::]:9901"}}, ("http", "::1", 9901)),
    ({"listen": "0.0.0.0:8081"}, ("tcp", "127.0.0.1", 8081)),  # no admin API: its listener accepts
    ({"listeners": [{"name": "https", "listen": "[::1]:8443"}, {"listen": "0.0.0.0:80"}]}, ("tcp", "::1", 8443)),
    ({}, ("tcp", "127.0.0.1", 8080)),
    (None, ("tcp", "127.0.0.1", 8080)),
])
def test_the_address_asked_is_the_one_the_config_gives(config: Any, expected: tuple[str, str, int]) -> None:
    assert health.target(config) == expected


class _Ready(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/ready" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]) -> None:
    """What the entrypoint leaves: the link to the config the process started with."""
    (tmp_path / "turnout.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "record.yaml").symlink_to(tmp_path / "turnout.yaml")
    monkeypatch.setattr(health, "RECORD", tmp_path / "record.yaml")
    monkeypatch.delenv("TURNOUT_HEALTH_URL", raising=False)


def test_it_asks_the_recorded_configs_admin_api(server: ThreadingHTTPServer, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.server_address[1]
    _record(tmp_path, monkeypatch, {"admin": {"listen": f"127.0.0.1:{port}"}})
    assert health.check() == (True, f"GET http://127.0.0.1:{port}/ready: 200")
    monkeypatch.setattr(_Ready, "status", 503)  # draining
    assert health.check() == (False, f"GET http://127.0.0.1:{port}/ready: 503")
    assert health.main() == 1


def test_nothing_listening_is_unhealthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # a port nobody listens on
        port = sock.getsockname()[1]
        _record(tmp_path, monkeypatch, {"admin": {"listen": f"127.0.0.1:{port}"}})
        assert health.check()[0] is False
        (tmp_path / "standalone").mkdir()
        _record(tmp_path / "standalone", monkeypatch, {"listen": f"127.0.0.1:{port}"})  # no admin API
        healthy, seen = health.check()
        assert not healthy and seen.startswith(f"connect 127.0.0.1:{port}:")
        sock.listen()
        assert health.check() == (True, f"connect 127.0.0.1:{port}: accepted")


def test_the_url_given_wins_and_no_record_means_no_turnout_here(server: ThreadingHTTPServer, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "RECORD", tmp_path / "absent.yaml")
    monkeypatch.delenv("TURNOUT_HEALTH_URL", raising=False)
    assert health.check() == (True, "no Turnout process here: nothing to check")
    monkeypatch.setenv("TURNOUT_HEALTH_URL", f"http://127.0.0.1:{server.server_address[1]}/elsewhere")
    assert health.check() == (False, f"GET http://127.0.0.1:{server.server_address[1]}/elsewhere: 404")
    _record(tmp_path, monkeypatch, {"admin": {"listen": "127.0.0.1:1"}})
    monkeypatch.setenv("TURNOUT_HEALTH_URL", f"http://127.0.0.1:{server.server_address[1]}/ready")
    assert health.check()[0] is True  # the URL given, not the recorded config's address


def test_an_unreadable_record_is_unhealthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "record.yaml").symlink_to(tmp_path / "gone.yaml")  # the config is not there
    monkeypatch.setattr(health, "RECORD", tmp_path / "record.yaml")
    monkeypatch.delenv("TURNOUT_HEALTH_URL", raising=False)
    healthy, seen = health.check()
    assert not healthy and seen.startswith("cannot read")
