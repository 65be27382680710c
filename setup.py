"""Builds the hot path with mypyc when it can, and as plain Python when it cannot.

Everything else about the package is in pyproject.toml. The modules in HOT_PATH are compiled to one C
extension: the code is strictly typed already, so the compiled build runs the very same source at about
half the Python cost per request. Where there is no C compiler (or no mypyc), or TURNOUT_PURE=1 is set,
the package installs as pure Python and works the same; `turnout proxy` logs which build is serving.
"""

from __future__ import annotations

import os
import runpy
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

# The modules to compile, listed beside the code that reports which build serves.
HOT_PATH = list(runpy.run_path("proxy/build.py")["HOT_PATH"])


def say(message: str) -> None:
    print(f"turnout build: {message}", file=sys.stderr)


def c_compiler() -> str | None:
    """The compiler setuptools would call (CC wins over Python's own build setting), if it exists."""
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    program = shlex.split(command)[0] if command.strip() else ""
    return shutil.which(program) if program else None


def python_headers() -> bool:
    return (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()


class BuildOrFallBack(build_ext):
    """A compiler that exists can still fail (a broken toolchain, a sandbox): then the package is the
    pure build rather than no package. All or nothing: the modules' small extensions import the shared
    one, so a half-built set is removed."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, BaseError, OSError) as exc:
            for built in self.get_outputs():
                Path(built).unlink(missing_ok=True)
            say(f"compiling failed ({exc}): installing the pure-Python build")


def extensions() -> list[Any]:
    if os.environ.get("TURNOUT_PURE") == "1":
        say("TURNOUT_PURE=1: installing the pure-Python build")
        return []
    if c_compiler() is None:
        say("no C compiler found: installing the pure-Python build (it serves the same, with more CPU)")
        return []
    if not python_headers():
        say("no Python headers (Python.h; Debian: python3-dev): installing the pure-Python build")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        say("mypyc is not available: installing the pure-Python build")
        return []
    say(f"compiling {len(HOT_PATH)} hot-path modules with mypyc")
    try:
        return list(mypycify(HOT_PATH, opt_level="3", group_name="turnout_hotpath"))
    except (Exception, SystemExit) as exc:  # mypyc exits when its type check fails (its errors are above)
        say(f"mypyc could not compile ({exc!r}): installing the pure-Python build")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildOrFallBack})
