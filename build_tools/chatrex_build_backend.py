"""PEP 517 build backend: setuptools, plus the ROS 2 build wheels of the distribution ``ROS_DISTRO`` selects.

pyproject.toml cannot choose its build requirements; a backend's ``get_requires_for_build_*`` hooks can.
Everything else is setuptools' own backend, unchanged.
"""

from __future__ import annotations

from typing import Any

from ros_distros import build_requirements, selected_distro
from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the other hooks)


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    """Setuptools' requirements and the selected distribution's ROS 2 build wheels."""
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *build_requirements(selected_distro())]


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    """As for a wheel: an editable install generates the same messages."""
    return [*_setuptools.get_requires_for_build_editable(config_settings), *build_requirements(selected_distro())]
