"""Starting Turnout as a user does, on a bad config file."""

from __future__ import annotations

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
