"""`pip install .` builds the ROS 2 messages with the real rosidl generators, then installs everything.

Metadata lives in pyproject.toml. This file adds the run-time dependencies (the ROS 2 wheels of the
distribution ROS_DISTRO selects, from build_tools/ros_distros.py, and pyproject's [tool.chatrex_ros]
dependencies) and one build step: CMake runs the
package's own CMakeLists.txt (rosidl_generate_interfaces) into a staging prefix, and the generated Python
modules, type-support extensions, shared libraries and ament index files are put where the ROS 2 PyPI
wheels put theirs: the Python package in site-packages, libraries in <prefix>/lib (on the bootstrapper's
LD_LIBRARY_PATH), ament files in <prefix>/share. No environment variables or sourcing are needed after.
A real ROS 2 workspace builds the same CMakeLists.txt with colcon instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

if sys.version_info >= (3, 11):
    import tomllib
else:  # a [build-system] requirement there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "build_tools"))
from ros_distros import runtime_requirements, selected_distro  # noqa: E402  (the path above)

PACKAGE = "chatrex_ros"
GENERATED_PACKAGES = ("msg", "srv", "action")


def ros_prefixes() -> list[Path]:
    """Install prefixes holding the ament/rosidl CMake configs (the venv, or pip's build-isolation overlay)."""
    candidates = [Path(sys.prefix)]
    for entry in sys.path:
        path = Path(entry)
        if path.name == "site-packages" and len(path.parents) >= 3:
            candidates.append(path.parents[2])
    prefixes: list[Path] = []
    for candidate in candidates:
        if (candidate / "share" / "ament_cmake").is_dir() and candidate not in prefixes:
            prefixes.append(candidate)
    if not prefixes:
        raise RuntimeError(
            "no ROS 2 build tools found: install the build requirements of pyproject.toml "
            "(pip does this itself unless --no-build-isolation is given)"
        )
    return prefixes


def build_messages(work: Path) -> Path:
    """Configure, build and install the message package into ``work/stage``; return that prefix."""
    if shutil.which("cmake") is None:
        raise RuntimeError(
            "cmake >= 3.16 and a C/C++ compiler are needed (Debian: apt-get install cmake g++ python3-dev)"
        )
    build_dir, stage = work / "cmake", work / "stage"
    # A stale CMakeCache would point at a previous, deleted build-isolation directory.
    shutil.rmtree(build_dir, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)
    prefixes = ros_prefixes()
    env = dict(os.environ)
    joined = os.pathsep.join(str(p) for p in prefixes)
    env["AMENT_PREFIX_PATH"] = joined
    env["CMAKE_PREFIX_PATH"] = joined
    library_dirs = [str(p / "lib") for p in prefixes]
    for entry in sys.path:  # the wheels' vendored libraries (ros_*.libs) are needed at link time
        site = Path(entry)
        if site.is_dir() and site.name == "site-packages":
            library_dirs += [str(d) for d in site.glob("ros_*.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_dirs + [env.get("LD_LIBRARY_PATH", "")])
    configure = [
        "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(build_dir),
        f"-DCMAKE_INSTALL_PREFIX={stage}",
        f"-DPython3_EXECUTABLE={sys.executable}",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_TESTING=OFF",
        "-DCHATREX_INSTALL_PYTHON_SOURCES=OFF",
    ]
    subprocess.run(configure, check=True, env=env)
    subprocess.run(["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 2)], check=True, env=env)
    subprocess.run(["cmake", "--install", str(build_dir)], check=True, env=env)
    return stage


def staged_python_package(stage: Path) -> Path:
    found = list(stage.glob(f"lib/python3*/site-packages/{PACKAGE}"))
    if len(found) != 1:
        raise RuntimeError(f"expected one generated {PACKAGE} Python package under {stage}, found {found}")
    return found[0]


def copy_generated_python(stage: Path, package_dir: Path) -> None:
    """msg/, srv/, action/ and the type-support extension modules, next to the hand-written code."""
    generated = staged_python_package(stage)
    for name in GENERATED_PACKAGES:
        shutil.rmtree(package_dir / name, ignore_errors=True)
        shutil.copytree(generated / name, package_dir / name)
    for extension in generated.glob("*.so"):
        shutil.copy2(extension, package_dir / extension.name)


class BuildPyWithMessages(build_py):
    """build_py that first generates and compiles the messages."""

    def run(self) -> None:
        super().run()
        stage = build_messages(ROOT / "build" / "messages")
        editable = bool(getattr(self, "editable_mode", False))
        package_dir = ROOT / PACKAGE if editable else Path(self.build_lib) / PACKAGE
        copy_generated_python(stage, package_dir)
        libraries = sorted(str(p) for p in (stage / "lib").glob("lib*.so"))
        share_files = [p for p in (stage / "share").rglob("*") if p.is_file()]
        if editable:
            # An editable wheel ignores data_files: put libraries and ament files into the environment itself.
            prefix = Path(sys.prefix)
            (prefix / "lib").mkdir(exist_ok=True)
            for library in libraries:
                shutil.copy2(library, prefix / "lib")
            for path in share_files:
                target = prefix / path.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            return
        data_files: dict[str, list[str]] = {"lib": libraries}
        for path in share_files:
            data_files.setdefault(str(path.parent.relative_to(stage)), []).append(str(path))
        entries = list(data_files.items())
        self.distribution.data_files = (self.distribution.data_files or []) + entries
        install_data = self.get_finalized_command("install_data")
        install_data.data_files = self.distribution.data_files


class BinaryDistribution(Distribution):
    """The wheel holds compiled type-support libraries: make it platform specific."""

    def has_ext_modules(self) -> bool:
        return True


def install_requires() -> list[str]:
    """The ROS 2 wheels of the selected distribution, then the other run-time dependencies."""
    own = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["chatrex_ros"]["dependencies"]
    return [*runtime_requirements(selected_distro()), *own]


setup(cmdclass={"build_py": BuildPyWithMessages}, distclass=BinaryDistribution, install_requires=install_requires())
