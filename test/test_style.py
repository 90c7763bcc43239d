"""The house style holds: ruff (lint and format) and mypy, as configured in pyproject.toml, report nothing.

Like ROS's ament_flake8 / ament_mypy tests: a change that breaks the style fails the suite, so the style
keeps itself. The linters are pinned in the ``lint`` extra, which ``dev`` includes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> list[str]:
    """Run the tool of this interpreter's environment (the venv the suite runs in)."""
    if shutil.which(name, path=str(Path(sys.executable).parent)) is None:
        pytest.fail(f"{name} is not installed: pip install '.[lint]' (part of '.[dev]')")
    return [sys.executable, "-m", name]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_lint_is_clean() -> None:
    result = _run([*_tool("ruff"), "check", "--no-cache", "."])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run([*_tool("ruff"), "format", "--check", "--no-cache", "."])
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout + result.stderr


def _rclpy_major() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ros-rclpy").split(".")[0]
    except PackageNotFoundError:
        return ""


@pytest.mark.skipif(
    _rclpy_major() != "9", reason="the types are checked against Kilted's rclpy (9.x); Jazzy's hints are incomplete"
)
def test_mypy_is_clean() -> None:
    result = _run([*_tool("mypy"), "--no-incremental", "--cache-dir", "/dev/null"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_installed_package_ships_its_py_typed_marker() -> None:
    """pyproject.toml claims typed code (package-data py.typed): the installed copy must carry the marker."""
    import chatrex_ros

    installed = [Path(p) for p in chatrex_ros.__path__ if Path(p).resolve() != ROOT / "chatrex_ros"]
    assert installed, "chatrex_ros is not installed (pip install '.[dev]')"
    assert all((p / "py.typed").is_file() for p in installed), installed
