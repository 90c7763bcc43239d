"""ROS_DISTRO picks one distribution's ROS 2 wheels, for the message build and for run time alike."""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from build_tools import ros_distros

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value,expected", [(None, "kilted"), ("", "kilted"), ("jazzy", "jazzy"), ("kilted", "kilted")])
def test_the_distro_is_ros_distro_or_kilted(value, expected) -> None:
    environ = {} if value is None else {"ROS_DISTRO": value}
    assert ros_distros.selected_distro(environ) == expected


def test_an_unsupported_distro_is_refused_with_the_choices() -> None:
    with pytest.raises(RuntimeError, match=r"kilted or jazzy, but ROS_DISTRO=humble.*ROS_DISTRO=kilted pip install"):
        ros_distros.selected_distro({"ROS_DISTRO": "humble"})


@pytest.mark.parametrize("distro", ros_distros.DISTROS)
def test_every_ros_wheel_is_the_distros_own(distro) -> None:
    runtime, build = ros_distros.runtime_requirements(distro), ros_distros.build_requirements(distro)
    assert f"ros-{distro}-rclpy" in runtime and f"ros-{distro}-rosidl-default-generators" in build
    for requirement in runtime + build:
        assert not requirement.startswith("ros-") or requirement.startswith(f"ros-{distro}-"), requirement


def test_the_script_prints_the_requirements_or_says_why_not() -> None:
    script = ROOT / "build_tools" / "ros_distros.py"
    jazzy = subprocess.run(
        [sys.executable, str(script), "build-requires"],
        env={**os.environ, "ROS_DISTRO": "jazzy"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert jazzy.stdout.split() == ros_distros.build_requirements("jazzy")
    humble = subprocess.run(
        [sys.executable, str(script), "runtime-requires"],
        env={**os.environ, "ROS_DISTRO": "humble"},
        capture_output=True,
        text=True,
    )
    assert humble.returncode == 1 and "ROS_DISTRO=humble" in humble.stderr and not humble.stdout


def _hook(name: str, distro: str, *args: str) -> object:
    """Call a PEP 517 hook of the in-tree backend in a fresh interpreter, as pip does (one per call)."""
    call = f"import json, sys, chatrex_build_backend as b; print(json.dumps(b.{name}(*sys.argv[1:])))"
    result = subprocess.run(
        [sys.executable, "-c", call, *args],
        cwd=ROOT,
        env={**os.environ, "ROS_DISTRO": distro, "PYTHONPATH": str(ROOT / "build_tools")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("distro", ros_distros.DISTROS)
def test_the_build_backend_asks_for_the_distros_wheels(distro, tmp_path) -> None:
    """What pip installs to build, and what the built package then requires: the same distribution's wheels."""
    build = _hook("get_requires_for_build_wheel", distro)
    assert isinstance(build, list) and set(ros_distros.build_requirements(distro)) <= set(build)
    metadata_dir = _hook("prepare_metadata_for_build_wheel", distro, str(tmp_path))
    metadata = email.message_from_string((tmp_path / str(metadata_dir) / "METADATA").read_text())
    requires = metadata.get_all("Requires-Dist")
    assert set(ros_distros.runtime_requirements(distro)) <= set(requires)
    assert "rosbags<0.12,>=0.10" in requires  # and pyproject's own dependencies beside them
    other = next(d for d in ros_distros.DISTROS if d != distro)
    assert not any(r.startswith(f"ros-{other}-") for r in requires)
