"""Which build serves: the compiled hot path where the install could compile it, pure Python where it could
not, and the start-up log says which.

`make test` runs the whole suite with TURNOUT_EXPECT_BUILD=compiled and the hot path's tests once more on a
copy of the sources with no extensions, with TURNOUT_EXPECT_BUILD=pure: a build that silently fell back
(or a copy that silently imported the extensions) fails here instead of measuring the wrong thing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

from proxy import build

from ..conftest import ROOT, ProxyProcess
from ..helpers import config_text, service

EXPECTED = os.environ.get("TURNOUT_EXPECT_BUILD")


def test_the_build_serving_is_the_expected_one_and_not_stale() -> None:
    serving = build.current()
    assert not serving.stale, serving.describe()
    if EXPECTED == "compiled":
        assert serving.compiled == tuple(build.module_name(path) for path in build.HOT_PATH), serving.describe()
    elif EXPECTED == "pure":
        assert serving.compiled == (), serving.describe()
    else:
        assert EXPECTED is None, f"TURNOUT_EXPECT_BUILD={EXPECTED!r}: compiled or pure"


def test_the_start_up_log_says_which_build_serves(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text(config_text({"shop": service({"v1": ["127.0.0.1:9"]}, version="v1")}))
    process = ProxyProcess(path)
    try:
        assert f"hot path: {build.current().kind}" in process.output()
    finally:
        process.stop()


def test_without_a_c_compiler_the_package_installs_as_pure_python_and_serves(tmp_path: Path) -> None:
    """The fallback for real: a wheel built where the compiler does not exist holds no extension, and a
    proxy installed from it says so and forwards."""
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-v", "--wheel-dir", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CC": "/nonexistent/cc"},
    )
    assert built.returncode == 0, built.stderr
    assert "no C compiler found: installing the pure-Python build" in built.stdout + built.stderr
    (wheel,) = wheels.glob("turnout-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "proxy/http/downstream.py" in names
    assert not [name for name in names if name.endswith(".so")]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                    "--target", str(target), str(wheel)], check=True, timeout=120)
    upstream = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline().split(" port ")[1].split()[0])
        config = tmp_path / "pure.yaml"
        config.write_text(config_text({"shop": service({"v1": [f"127.0.0.1:{port}"]}, version="v1")}))
        # From a folder outside the repository, with the wheel's files first on the path.
        process = ProxyProcess(config, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
        try:
            assert "hot path: pure Python" in process.output()
            with urllib.request.urlopen(f"http://127.0.0.1:{process.port}/wheels/", timeout=5) as response:
                assert response.status == 200 and wheel.name in response.read().decode()
        finally:
            process.stop()
    finally:
        upstream.terminate()
        upstream.wait(10)

