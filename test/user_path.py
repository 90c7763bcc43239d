"""Running the package the way a user does: the installed `chatrex-ros` console script, from a directory
outside the source tree, with the source tree off the import path (only the test doubles are importable).

Used by the end-to-end robot-path tests and by the tests that run the README's commands.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chatrex_ros.launcher import FASTDDS_PROFILE_VARIABLES

TEST_DIR = Path(__file__).resolve().parent
ROOT = TEST_DIR.parent
CHATREX_ROS = str(Path(sys.executable).with_name("chatrex-ros"))
"""The console script pip installed beside this interpreter (not ``python -m`` from the source tree)."""


def user_environment(profile: bool = True) -> dict[str, str]:
    """The test's DDS settings (local, per-run domain), the installed package, the test doubles importable.

    ``profile=False`` leaves the package's Fast DDS profile out, like a camera driver started on its own.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(TEST_DIR)  # test doubles only: chatrex_ros comes from site-packages
    env["PYTHONUNBUFFERED"] = "1"
    if not profile:
        for name in FASTDDS_PROFILE_VARIABLES:
            env.pop(name, None)
        env.pop("RMW_FASTRTPS_USE_QOS_FROM_XML", None)
    return env


def workdir() -> Path:
    """A fresh directory outside the source tree."""
    path = Path(tempfile.mkdtemp(prefix="chatrex_user_"))
    assert ROOT not in path.parents
    return path


def run(args: list[str], cwd: Path, timeout: float = 300.0, **kwargs) -> subprocess.CompletedProcess[str]:
    """One command, as typed: ``args[0]`` 'chatrex-ros' is the installed script."""
    command = [CHATREX_ROS if args[0] == "chatrex-ros" else args[0], *args[1:]]
    return subprocess.run(
        command, cwd=cwd, env=user_environment(), capture_output=True, text=True, timeout=timeout, **kwargs
    )


class Background:
    """A long-running command (``chatrex-ros up``, a camera) with its output in a file."""

    def __init__(self, args: list[str], cwd: Path, profile: bool = True) -> None:
        command = [CHATREX_ROS if args[0] == "chatrex-ros" else args[0], *args[1:]]
        # Open for the process's lifetime: the child writes to it until it ends.
        self._log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False, dir=cwd)  # noqa: SIM115
        self.process = subprocess.Popen(
            command, cwd=cwd, env=user_environment(profile), stdout=self._log, stderr=subprocess.STDOUT, text=True
        )

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def wait_for(self, *needles: str, timeout: float = 90.0) -> None:
        """Until every needle is in the output; fails with the output if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            if all(needle in text for needle in needles):
                return
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode} before {needles}:\n{text}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {needles}:\n{self.output()}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def camera(
    cwd: Path,
    topic: str,
    rate_hz: float,
    width: int = 640,
    height: int = 480,
    profile: bool = True,
    depth: tuple[str, str, str] | None = None,
) -> Background:
    """The camera driver double in its own process."""
    args = [sys.executable, str(TEST_DIR / "camera_process.py"), topic, str(rate_hz), str(width), str(height)]
    if depth:
        args += ["--depth", *depth]
    return Background(args, cwd, profile=profile)


def up(cwd: Path, *args: str) -> Background:
    """``chatrex-ros up ARGS`` running until stopped, waited for until both nodes said they are ready."""
    graph = Background(["chatrex-ros", "up", *args], cwd)
    needles = ["[proposal_node]", "[language_node]"]
    if "--grasp" in args:
        needles.append("[grasp_target_node]")
    graph.wait_for(*[f"{n} " for n in needles])
    graph.wait_for("proposal backend", "language backend", timeout=120)
    if "--grasp" in args:
        graph.wait_for("grasp targets:")
    return graph
