"""Starting Turnout as a user does, on a bad config file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..unit.test_reader import BASE


def test_proxy_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("v2: 10}", "v3: 10}"))
    result = subprocess.run([sys.executable, "-m", "proxy", "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == f"turnout: {path}: services.shop.rules[1].split.v3: unknown version 'v3' (versions: v1, v2)"


def test_check_refuses_what_the_proxy_refuses(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text("admin: {listen: 127.0.0.1:0, token_env: TURNOUT_TEST_UNSET_TOKEN}\n" + BASE)
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_TEST_UNSET_TOKEN"}
    checked = subprocess.run([sys.executable, "-m", "turnout", "check", "--config", str(path)], capture_output=True,
                             text=True, timeout=30, env=env)
    started = subprocess.run([sys.executable, "-m", "proxy", "--config", str(path)], capture_output=True, text=True,
                             timeout=30, env=env)
    expected = f"turnout: {path}: admin.token_env: environment variable TURNOUT_TEST_UNSET_TOKEN is not set"
    assert checked.returncode == started.returncode == 2
    assert checked.stderr.strip() == started.stderr.strip() == expected
    assert not list(tmp_path.glob("*.token"))  # check created nothing
    ok = subprocess.run([sys.executable, "-m", "turnout", "check", "--config", str(path)], capture_output=True,
                        text=True, timeout=30, env={**env, "TURNOUT_TEST_UNSET_TOKEN": "s3cret"})
    assert ok.returncode == 0 and "ok" in ok.stdout


def test_logs_as_json_lines_at_the_level_asked(tmp_path: Path) -> None:
    import json
    import signal
    import time

    path = tmp_path / "turnout.yaml"
    path.write_text("listen: 127.0.0.1:0\n" + BASE)
    process = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(path), "--log-format", "json",
                                "--log-level", "debug", "--workers", "2"], stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    entries = [json.loads(line) for line in err.strip().splitlines()]  # every line is one JSON object
    assert {"time", "level", "program", "pid", "message"} <= set(entries[0])
    assert any(e["message"].startswith("listening on http://127.0.0.1:") for e in entries)
    assert len({e["pid"] for e in entries}) >= 3  # the supervisor and its two workers log alike
    assert {e["level"] for e in entries} <= {"debug", "info", "warning", "error"}


def _unwritable(folder: Path) -> bool:
    """Make ``folder`` refuse new files, root included (chattr +i; chmod for other users)."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        return True
    return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0


def _writable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o700)


def test_a_start_whose_state_file_cannot_be_written_exits_with_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "turnout.yaml"
    path.write_text("listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0, token_env: TURNOUT_TEST_TOKEN}\n" + BASE)
    if not _unwritable(folder):
        raise AssertionError("cannot make a folder unwritable here (chattr)")
    try:
        started = subprocess.run([sys.executable, "-m", "proxy", "--config", str(path)], capture_output=True, text=True,
                                 timeout=30, env={**os.environ, "TURNOUT_TEST_TOKEN": "t"})
    finally:
        _writable(folder)
    lines = started.stderr.strip().splitlines()
    assert started.returncode == 2 and len(lines) == 1, started.stderr
    assert lines[0].startswith("turnout: cannot write the state file") and "nothing was changed" in lines[0]
    assert "Traceback" not in started.stderr and "listening on" not in started.stderr  # before binding any port
