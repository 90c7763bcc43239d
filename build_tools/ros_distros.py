"""The ROS 2 distributions chatrex_ros installs against: the one table of their wheels.

ROS 2 from PyPI comes as one set of wheels per distribution; ``ros-<distro>-<package>`` metas pin the plain
``ros-<package>`` wheels to that distribution's versions. The messages are compiled against the build
tools of a distribution and must run against the same one, so one choice, ``ROS_DISTRO`` (what sourcing a
ROS 2 install sets; kilted when unset), selects both the build requirements (the build backend,
``chatrex_build_backend``) and the runtime requirements (``setup.py``). Plain Python: no setuptools needed.

``python build_tools/ros_distros.py build-requires`` prints the build requirements, for a colcon or
``--no-build-isolation`` build in a virtual environment.
"""

from __future__ import annotations

import os
import sys

DEFAULT_DISTRO = "kilted"

# What the package imports at run time, by ROS package name (the wheels are ros-<distro>-<name>).
RUNTIME_PACKAGES = (
    "rclpy",  # rclpy.action and rclpy.lifecycle come with it
    "rmw-fastrtps-cpp",
    "rosidl-default-runtime",
    "builtin-interfaces",
    "std-msgs",
    "sensor-msgs",
    "geometry-msgs",
    "visualization-msgs",
    "diagnostic-msgs",
    "rosgraph-msgs",
    "action-msgs",  # the Ask action
    "std-srvs",  # proposal_node's enable service
    "lifecycle-msgs",  # managed nodes
)

# What CMakeLists.txt finds (rosidl_generate_interfaces and its dependencies), by ROS package name.
BUILD_PACKAGES = (
    "ament-cmake",
    "ament-package",
    "ament-cmake-python",
    "ament-cmake-include-directories",
    "rosidl-default-generators",
    "rosidl-core-generators",
    "builtin-interfaces",
    "std-msgs",
    "geometry-msgs",
    "action-msgs",
    "unique-identifier-msgs",
)

# Where a distribution's build needs more: Jazzy's ament_cmake_ros finds the test frameworks (Kilted split
# them off into ament_cmake_ros_core), its rosidl_generator_py python_cmake_module, and its Fast DDS type
# support fastrtps_cmake_module, which its generator wheels do not require.
EXTRA_BUILD_PACKAGES = {
    "kilted": ("ament-cmake-ros-core",),
    "jazzy": (
        "ament-cmake-ros",
        "ament-cmake-gmock",
        "ament-cmake-gtest",
        "ament-cmake-pytest",
        "python-cmake-module",
        "fastrtps-cmake-module",
    ),
}
DISTROS = tuple(EXTRA_BUILD_PACKAGES)

# Not ROS: what the message build itself runs (setuptools comes with the [build-system] requirements).
BUILD_TOOLS = ("wheel", "numpy>=1.26", "catkin_pkg>=1.0")


def selected_distro(environ: dict[str, str] | None = None) -> str:
    """The distribution ``ROS_DISTRO`` names (kilted when unset); any other raises with the choices."""
    value = (os.environ if environ is None else environ).get("ROS_DISTRO", "").strip() or DEFAULT_DISTRO
    if value not in DISTROS:
        raise RuntimeError(
            f"chatrex_ros installs against ROS 2 {' or '.join(DISTROS)}, but ROS_DISTRO={value}: "
            f"set ROS_DISTRO to one of them for this install (e.g. ROS_DISTRO={DEFAULT_DISTRO} pip install ...)"
        )
    return value


def _wheels(distro: str, packages: tuple[str, ...]) -> list[str]:
    return [f"ros-{distro}-{name}" for name in packages]


def runtime_requirements(distro: str) -> list[str]:
    """The ROS 2 wheels the installed package needs at run time."""
    return _wheels(distro, RUNTIME_PACKAGES)


def build_requirements(distro: str) -> list[str]:
    """The wheels the message build needs besides setuptools."""
    return [*BUILD_TOOLS, *_wheels(distro, BUILD_PACKAGES + EXTRA_BUILD_PACKAGES[distro])]


def main(argv: list[str]) -> int:
    """Print the build or run-time requirements of the selected distribution, space-separated."""
    lists = {"build-requires": build_requirements, "runtime-requires": runtime_requirements}
    if len(argv) != 1 or argv[0] not in lists:
        print(
            f"usage: ros_distros.py {' | '.join(lists)}   (for ROS_DISTRO, default {DEFAULT_DISTRO})", file=sys.stderr
        )
        return 2
    try:
        print(" ".join(lists[argv[0]](selected_distro())))
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
