"""Start the chatrex graph as processes from a ROS params file: what `ros2 launch` does, without the ROS CLI.

The graph (node names, modules, parameter tables, default remappings) is the table :data:`GRAPH`;
launch/chatrex.launch.py describes the same graph with the standard launch API for real ROS installs (a test
keeps them in sync).

The params file is read as rcl reads it (:mod:`chatrex_ros.params_file`) and every value, from the file or from
``--set``, is checked against the node's parameter table *before* anything starts: a misspelt node or parameter
would otherwise be ignored by rcl without a word and the robot would run with defaults that look configured.
Each child then gets one params file with its resolved parameters keyed by its fully qualified name.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import yaml

from chatrex_ros.commands.exit_codes import ExitCode
from chatrex_ros.names import NAMESPACE
from chatrex_ros.parameters import ParamSpec, flatten, resolve
from chatrex_ros.params_file import (
    ROS_PARAMETERS,
    Section,
    bare_names_in_namespace,
    load_sections,
    matches,
    node_parameters,
    qualified_name,
)
from chatrex_ros.paths import config_file

DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
# realsense-ros 4.x with align_depth.enable:=true (its node is /camera/camera): depth registered to colour.
DEFAULT_DEPTH_TOPIC = "/camera/camera/aligned_depth_to_color/image_raw"
DEFAULT_DEPTH_INFO_TOPIC = "/camera/camera/aligned_depth_to_color/camera_info"
DEFAULT_COLOR_INFO_TOPIC = "/camera/camera/color/camera_info"

USE_SIM_TIME = ParamSpec("use_sim_time", False, "ROS's built-in parameter of every node: take time from /clock.")
"""Declared by rclpy itself, so no node table lists it; a params file may set it for any node."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph: how to start it, which inputs the launcher remaps, which parameters it takes."""

    name: str
    module: str
    parameter_table: str  # "module:ATTRIBUTE" of its ParamSpec list; imported on use (grasp's module loads rclpy)
    remaps: Mapping[str, str] = field(default_factory=dict)
    optional: bool = False  # started only when asked for (launch argument / --grasp)

    @property
    def qualified_name(self) -> str:
        """The node's fully qualified name in the graph's namespace, e.g. ``/chatrex/proposal_node``."""
        return qualified_name(NAMESPACE, self.name)

    def parameter_specs(self) -> list[ParamSpec]:
        """The node's table plus ``use_sim_time``: everything a params file may set for it."""
        module, _, attribute = self.parameter_table.partition(":")
        return [*getattr(importlib.import_module(module), attribute), USE_SIM_TIME]


GRAPH: tuple[NodeSpec, ...] = (
    NodeSpec(
        "proposal_node",
        "chatrex_ros.ros.proposal_node",
        "chatrex_ros.node_parameters:PROPOSAL_NODE",
        {"image": DEFAULT_IMAGE_TOPIC},
    ),
    NodeSpec(
        "language_node",
        "chatrex_ros.ros.language_node",
        "chatrex_ros.node_parameters:LANGUAGE_NODE",
        {"image": DEFAULT_IMAGE_TOPIC},
    ),
    NodeSpec(
        "grasp_target_node",
        "chatrex_ros.ros.grasp_target_node",
        "chatrex_ros.node_parameters:GRASP_NODE",
        {
            "depth": DEFAULT_DEPTH_TOPIC,
            "depth/camera_info": DEFAULT_DEPTH_INFO_TOPIC,
            "color/camera_info": DEFAULT_COLOR_INFO_TOPIC,
        },
        optional=True,
    ),
)


class GraphConfigError(ValueError):
    """Everything wrong with a params file and the overrides, found before any node starts."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class GraphConfig:
    """A params file as the launcher reads it (see :func:`load_config`)."""

    path: Path
    sections: list[Section]
    bare_names: list[str] = field(default_factory=list)  # sections written `language_node:`, read in /chatrex


@dataclass
class PlannedNode:
    """One process to start: its command line and the parameters it gets."""

    spec: NodeSpec
    parameters: dict[str, Any]
    remaps: dict[str, str]

    def command(self, params_file: Path) -> list[str]:
        """The command line that starts this node with its name, namespace, ``params_file`` and remaps."""
        command = [
            sys.executable,
            "-m",
            self.spec.module,
            "--ros-args",
            "-r",
            f"__node:={self.spec.name}",
            "-r",
            f"__ns:=/{NAMESPACE}",
            "--params-file",
            str(params_file),
        ]
        for source, target in self.remaps.items():
            command += ["-r", f"{source}:={target}"]
        return command

    def params_document(self) -> dict[str, Any]:
        """The child's params file: keyed by its fully qualified name, so rcl applies it to exactly this node."""
        return {self.spec.qualified_name: {ROS_PARAMETERS: dict(self.parameters)}}


def load_config(path: Path | None) -> GraphConfig:
    """A standard ROS 2 params file (default: the package's config/chatrex.yaml).

    Bare node names (``language_node:``) are read as the node in /chatrex: rcl would apply them only to a node
    in the root namespace, which this graph never has, so the section would silently do nothing.
    """
    path = path or config_file("chatrex.yaml")
    found = load_sections(path)
    read = bare_names_in_namespace(found, NAMESPACE)
    return GraphConfig(Path(path), read, [section.written for section in read if section.written])


def _problems(specs: Sequence[ParamSpec], values: Mapping[str, Any], where: str) -> list[str]:
    """:func:`resolve`'s complaints about ``values``, each prefixed with where they came from."""
    try:
        resolve(specs, values)
    except ValueError as error:
        return [f"{where}: {line.strip()}" for line in str(error).splitlines()[1:] if line.strip()]
    return []


def override_value(spec: ParamSpec | None, text: Any) -> Any:
    """A ``--set`` value: YAML, except that a string parameter keeps the text as typed.

    Why: ``--set language_node.backend_options={"a": 1}`` is JSON for a string parameter; read as YAML it
    would become a mapping (and then nested parameter names). Quoted YAML (``'"0.5"'``) still gives a string.
    """
    if not isinstance(text, str):
        return text  # already typed (a caller other than the command line)
    if text == "":
        return ""
    parsed = yaml.safe_load(text)
    if spec is not None and isinstance(spec.default, str) and not isinstance(parsed, str):
        return text
    return parsed


def _typed(node: str, values: Mapping[str, Any]) -> dict[str, Any]:
    specs = next((spec.parameter_specs() for spec in GRAPH if spec.name == node), [])
    by_name = {spec.name: spec for spec in specs}
    return {name: override_value(by_name.get(name), value) for name, value in values.items()}


def plan_graph(
    config: GraphConfig,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    topics: Mapping[str, str] | None = None,
    with_grasp: bool = False,
) -> list[PlannedNode]:
    """The nodes to start, with resolved parameters; GraphConfigError listing every problem found.

    ``overrides`` are ``--set`` values ({node: {parameter: value}}), applied over the file; ``topics`` remaps
    node inputs ({"image": "/cam/rgb", "depth": ...}) for every node that has them. Every node of the graph is
    checked, the optional ones too, so a mistake shows now and not the day they are started.
    """
    overrides = {node: _typed(node, values) for node, values in (overrides or {}).items()}
    names = [spec.name for spec in GRAPH]
    problems: list[str] = []
    for section in config.sections:
        if not any(matches(section.pattern, spec.qualified_name) for spec in GRAPH):
            nodes = ", ".join(spec.qualified_name for spec in GRAPH)
            problems.append(
                f"{config.path}: section {section.label!r} applies to no node of the graph; the nodes "
                f"are {nodes} (name a section e.g. '/**/language_node')"
            )
    for node, values in overrides.items():
        if node not in names:
            problems += [
                f"--set {node}.{parameter}: unknown node {node!r}; the nodes are {', '.join(names)}"
                for parameter in values
            ]
    planned = []
    for spec in GRAPH:
        specs = spec.parameter_specs()
        node_problems: list[str] = []
        for section in config.sections:
            if matches(section.pattern, spec.qualified_name):
                where = f"{config.path}: {section.label} (for {spec.qualified_name})"
                node_problems += _problems(specs, section.parameters, where)
        for parameter, value in overrides.get(spec.name, {}).items():
            node_problems += _problems(specs, {parameter: value}, f"--set {spec.name}.{parameter}")
        if any("unknown parameter" in problem for problem in node_problems):
            node_problems.append(f"the parameters of {spec.name} are: {', '.join(p.name for p in specs)}")
        problems += node_problems
        if node_problems or (spec.optional and not with_grasp):
            continue
        values = {**node_parameters(config.sections, spec.qualified_name), **flatten(overrides.get(spec.name, {}))}
        remaps = {source: (topics or {}).get(source, target) for source, target in spec.remaps.items()}
        if "image" in remaps:  # image_transport's naming: the compressed stream of T is T/compressed
            remaps["image/compressed"] = compressed_topic(remaps["image"])
        planned.append(PlannedNode(spec, resolve(specs, values), remaps))
    if problems:
        raise GraphConfigError(problems)
    return planned


FASTDDS_PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
"""Where Fast DDS looks for its XML profile: Fast DDS 3 (Kilted) reads the first (and warns, on every start, that
the second is deprecated when it is set), Fast DDS 2 (Jazzy) reads only the second."""


def fastdds_major(environ: Mapping[str, str] | None = None) -> int:
    """The installed Fast DDS's major version: from the PyPI wheels' metadata, else the sourced ROS_DISTRO."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("ros-fastdds", "ros-fastrtps"):
        try:
            return int(version(distribution).split(".")[0])
        except (PackageNotFoundError, ValueError):
            continue
    distro = (os.environ if environ is None else environ).get("ROS_DISTRO", "")
    return 2 if distro in ("humble", "jazzy") else 3


def fastdds_profile_variable(environ: Mapping[str, str] | None = None) -> str:
    """The one of :data:`FASTDDS_PROFILE_VARIABLES` that the installed Fast DDS reads."""
    return FASTDDS_PROFILE_VARIABLES[1] if fastdds_major(environ) == 2 else FASTDDS_PROFILE_VARIABLES[0]


def with_fastdds_profile(env: dict[str, str], default: str) -> dict[str, str]:
    """``env`` with a Fast DDS profile where the installed Fast DDS reads it: the one already set, else ``default``.

    A profile set under the other distribution's name (a Kilted habit on Jazzy, or the reverse) would be silently
    ignored, and camera frames would leave shared memory: it is copied to the name that counts.
    """
    chosen = next((env[name] for name in FASTDDS_PROFILE_VARIABLES if env.get(name)), None)
    if chosen is None:
        chosen = default
        env.setdefault("RMW_FASTRTPS_USE_QOS_FROM_XML", "0")
    env.setdefault(fastdds_profile_variable(env), chosen)
    return env


def compressed_topic(image_topic: str) -> str:
    """Where image_transport's ``compressed`` transport publishes the frames of ``image_topic``."""
    return image_topic.rstrip("/") + "/compressed"


def dds_environment(
    base: Mapping[str, str] | None = None, *, multihost: bool = False, discovery_server: str = ""
) -> dict[str, str]:
    """The nodes' DDS environment: the package's Fast DDS profile unless the user chose one.

    ``fastdds.xml`` (one host: a 32 MB shared-memory segment, UDP on loopback only) by default;
    ``fastdds_multihost.xml`` (UDP on every interface) with ``multihost`` or a ``discovery_server``
    (``HOST:PORT[;HOST:PORT...]``, set as ``ROS_DISCOVERY_SERVER``: the nodes discover each other through that Fast
    DDS discovery server instead of multicast). Across hosts, ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` would keep
    the nodes from finding each other, so it is raised to ``SUBNET`` there.
    """
    env = dict(base if base is not None else os.environ)
    spanning = multihost or bool(discovery_server)
    with_fastdds_profile(env, str(config_file("fastdds_multihost.xml" if spanning else "fastdds.xml")))
    if spanning and env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST":
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
    if discovery_server:
        env["ROS_DISCOVERY_SERVER"] = check_discovery_server(discovery_server)
    return env


def check_discovery_server(value: str) -> str:
    """``HOST:PORT`` (several separated by ``;``) as ROS_DISCOVERY_SERVER takes it; ValueError otherwise."""
    for server in value.split(";"):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--discovery-server {value!r}: expected HOST:PORT (e.g. 192.168.1.10:11811)")
    return value


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the launcher dies, even by SIGKILL (Linux only).

    The children run in their own session (a terminal's Ctrl-C reaches only the launcher, which stops them in
    order), so nothing else would tell them that their launcher is gone and they would keep the camera and GPU.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopRequested(Exception):
    """Raised by the signal handler in the main thread to leave the wait loop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


PARAMS_DIR_PREFIX = "chatrex_up_"
"""``up``'s node parameter files go in ``<tmp>/chatrex_up_<pid>_<random>``, removed when it stops."""


def remove_stale_params_dirs(tmp: Path | None = None) -> list[Path]:
    """Remove the parameter directories of ``up`` runs that died without cleaning up (``kill -9``, power loss).

    The pid in the name tells: a directory whose process is gone is stale. Returns what was removed.
    """
    removed = []
    for path in Path(tmp or tempfile.gettempdir()).glob(f"{PARAMS_DIR_PREFIX}*_*"):
        pid = path.name[len(PARAMS_DIR_PREFIX) :].split("_", 1)[0]
        if not pid.isdigit() or _process_alive(int(pid)) or not path.is_dir():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, someone else's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class GraphProcesses:
    """Runs planned nodes, prefixes and forwards their output, stops all on SIGINT/SIGTERM/SIGHUP or when one exits.

    A requested stop (Ctrl-C, ``kill``, systemd, docker stop, a closed terminal) exits 0, as the stop is what the
    user asked for (systemd counts 143 as a failure); a node that exits on its own ends the graph with its code.
    A second signal while stopping kills the nodes that are still running.
    """

    def __init__(
        self, planned: Sequence[PlannedNode], out: TextIO = sys.stdout, environment: Mapping[str, str] | None = None
    ) -> None:
        self.planned = list(planned)
        self.out = out
        self._environment = environment  # None: dds_environment() of this process's environment
        self.processes: list[tuple[str, subprocess.Popen[str]]] = []
        self._forwarders: list[threading.Thread] = []
        remove_stale_params_dirs()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{PARAMS_DIR_PREFIX}{os.getpid()}_")
        self._print_lock = threading.Lock()
        self._stopping = False
        self._hurry = False

    def run(self) -> int:
        """Start, wait, stop; the signal handlers cover start-up too (a stop during start-up stops what started)."""
        previous = self._install_signal_handlers()
        try:
            self.start()
            return self.wait()
        except _StopRequested as stop:
            self._say(f"{stop}: stopping the graph")
            return ExitCode.OK
        finally:
            self.stop()
            for signum, handler in previous.items():
                if handler is not None:  # None: set outside Python, cannot be put back
                    signal.signal(signum, handler)

    def start(self) -> None:
        """Write each node's params file and start its process, then the threads that forward their output."""
        env = dict(self._environment) if self._environment is not None else dds_environment()
        preexec = die_with_parent()
        for node in self.planned:
            params_file = Path(self._tmp.name) / f"{node.spec.name}.yaml"
            params_file.write_text(yaml.safe_dump(node.params_document(), sort_keys=False))
            process = subprocess.Popen(
                node.command(params_file),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
            self.processes.append((node.spec.name, process))
        # Forwarders start after the last fork: preexec_fn is only safe while this process has no other threads.
        for name, process in self.processes:
            thread = threading.Thread(target=self._forward, args=(name, process), daemon=True)
            thread.start()
            self._forwarders.append(thread)

    def _forward(self, name: str, process: subprocess.Popen[str]) -> None:
        """Prefix and print a node's lines, and keep draining its pipe when our output is gone.

        Our output can be gone (a closed terminal); if the pipe were no longer drained the node would block on
        a full pipe while it is being stopped.
        """
        assert process.stdout is not None
        for line in process.stdout:
            self._write(f"[{name}] {line}")

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # Python delivers signals to the main thread only; its caller keeps its own handling

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stopping:
                self._hurry = True
            else:
                raise _StopRequested(signum)

        # A signal ignored by whoever started us stays ignored (`nohup` ignores SIGHUP, `cmd &` in a script SIGINT).
        wanted = [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]
        return {signum: signal.signal(signum, handler) for signum in wanted}

    def wait(self) -> int:
        """Block until a stop signal (exit 0) or until a node exits on its own, and return the exit status.

        For a node that exits on its own that is its exit code, 128 + N when a signal N ended it (as a shell
        reports it), 1 when it exited with 0 (the graph is incomplete).
        """
        try:
            while True:
                for name, process in self.processes:
                    code = process.poll()
                    if code is not None:
                        self._stopping = True  # from here a signal only hurries the stop
                        self._say(f"{name} exited with code {code}; stopping the graph")
                        return code if code > 0 else 128 - code if code < 0 else ExitCode.FAILED
                time.sleep(0.2)
        except KeyboardInterrupt:  # no handlers installed (wait() called outside run() or off the main thread)
            self._say("Ctrl-C: stopping the graph")
            return ExitCode.OK
        except _StopRequested as stop:
            self._say(f"{stop}: stopping the graph")
            return ExitCode.OK

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGINT every node (rclpy shuts down cleanly on it), wait, then kill what is left; idempotent."""
        self._stopping = True
        for _, process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while (
            any(process.poll() is None for _, process in self.processes)
            and time.monotonic() < deadline
            and not self._hurry
        ):
            time.sleep(0.05)
        for name, process in self.processes:
            if process.poll() is None:
                reason = "a second signal" if self._hurry else f"did not stop in {timeout_s:.0f} s"
                self._say(f"{name}: {reason}; killing it")
                process.kill()
                process.wait()
        for thread in self._forwarders:
            thread.join(timeout=1.0)  # the nodes' last lines
        self._tmp.cleanup()

    def _say(self, text: str) -> None:
        self._write(f"[chatrex-ros up] {text}\n")

    def _write(self, text: str) -> None:
        with self._print_lock:
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):  # a hung-up terminal or closed stream must not stop the shutdown
                pass
