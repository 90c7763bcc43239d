"""Start the chatrex graph as processes from a ROS params file: what `ros2 launch` does, without the ROS CLI.

The graph (node names, modules, default remappings) is the table :data:`GRAPH`; launch/chatrex.launch.py
describes the same graph with the standard launch API for real ROS installs (a test keeps them in sync).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from chatrex_ros.paths import config_file

NAMESPACE = "chatrex"
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"
DEFAULT_DEPTH_INFO_TOPIC = "/camera/aligned_depth_to_color/camera_info"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    module: str
    remaps: Mapping[str, str] = field(default_factory=dict)
    optional: bool = False  # started only when asked for (launch argument / --grasp)


GRAPH: tuple[NodeSpec, ...] = (
    NodeSpec("proposal_node", "chatrex_ros.ros.proposal_node", {"image": DEFAULT_IMAGE_TOPIC}),
    NodeSpec("language_node", "chatrex_ros.ros.language_node", {"image": DEFAULT_IMAGE_TOPIC}),
    NodeSpec("grasp_target_node", "chatrex_ros.ros.grasp_target_node",
             {"depth": DEFAULT_DEPTH_TOPIC, "depth/camera_info": DEFAULT_DEPTH_INFO_TOPIC}, optional=True),
)


@dataclass
class PlannedNode:
    """One process to start: its command line and the parameters it gets."""

    spec: NodeSpec
    parameters: dict[str, Any]
    remaps: dict[str, str]

    def command(self, params_file: Path) -> list[str]:
        command = [sys.executable, "-m", self.spec.module, "--ros-args", "-r", f"__node:={self.spec.name}",
                   "-r", f"__ns:=/{NAMESPACE}", "--params-file", str(params_file)]
        for source, target in self.remaps.items():
            command += ["-r", f"{source}:={target}"]
        return command


def load_config(path: Path | None) -> dict[str, Any]:
    """A standard ROS 2 params file: {node_name: {ros__parameters: {...}}}."""
    path = path or config_file("chatrex.yaml")
    with open(path, encoding="utf-8") as stream:
        data = yaml.safe_load(stream) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of node names to {{ros__parameters: ...}}")
    return data


def plan_graph(
    config: Mapping[str, Any],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    image_topic: str = DEFAULT_IMAGE_TOPIC,
    with_grasp: bool = False,
) -> list[PlannedNode]:
    planned = []
    for spec in GRAPH:
        if spec.optional and not with_grasp:
            continue
        section = config.get(spec.name, {}) or {}
        parameters = dict(section.get("ros__parameters", {}) or {})
        parameters.update((overrides or {}).get(spec.name, {}))
        remaps = {k: (image_topic if k == "image" else v) for k, v in spec.remaps.items()}
        planned.append(PlannedNode(spec, parameters, remaps))
    return planned


def dds_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The big-SHM Fast DDS profile unless the user chose one (camera frames otherwise leave shared memory)."""
    env = dict(base if base is not None else os.environ)
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in env:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(config_file("fastdds.xml"))
        env.setdefault("RMW_FASTRTPS_USE_QOS_FROM_XML", "0")
    return env


class GraphProcesses:
    """Runs planned nodes, prefixes and forwards their output, shuts all down on Ctrl-C or when one exits."""

    def __init__(self, planned: Sequence[PlannedNode], out: TextIO = sys.stdout) -> None:
        self.planned = list(planned)
        self.out = out
        self.processes: list[tuple[str, subprocess.Popen[str]]] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="chatrex_up_")
        self._print_lock = threading.Lock()

    def start(self) -> None:
        env = dds_environment()
        for node in self.planned:
            params_file = Path(self._tmp.name) / f"{node.spec.name}.yaml"
            params_file.write_text(yaml.safe_dump({node.spec.name: {"ros__parameters": node.parameters}}))
            process = subprocess.Popen(node.command(params_file), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, env=env, start_new_session=True)
            self.processes.append((node.spec.name, process))
            threading.Thread(target=self._forward, args=(node.spec.name, process), daemon=True).start()

    def _forward(self, name: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._print_lock:
                self.out.write(f"[{name}] {line}")
                self.out.flush()

    def wait(self) -> int:
        """Block until Ctrl-C (exit 0) or until a node exits on its own (its exit code)."""
        try:
            while True:
                for name, process in self.processes:
                    code = process.poll()
                    if code is not None:
                        self._say(f"{name} exited with code {code}; stopping the graph")
                        return code or 1
                time.sleep(0.2)
        except KeyboardInterrupt:
            self._say("Ctrl-C: stopping the graph")
            return 0
        finally:
            self.stop()

    def stop(self, timeout_s: float = 10.0) -> None:
        for _, process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for name, process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(f"{name} did not stop in {timeout_s:.0f} s; killing it")
                process.kill()
                process.wait()
        self._tmp.cleanup()

    def _say(self, text: str) -> None:
        with self._print_lock:
            self.out.write(f"[chatrex-ros up] {text}\n")
            self.out.flush()
