"""`chatrex-ros up` for real: overrides reach the running nodes, mistakes stop it before anything starts, and no
node outlives it however it is stopped (SIGTERM from systemd/docker/kill, SIGHUP from a closed terminal, SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from ros_harness import RosClient, get_parameters, wait_until

from chatrex_ros.cli import main
from chatrex_ros.launcher import FASTDDS_PROFILE_VARIABLES, remove_stale_params_dirs

# Light nodes: no warm-up frame, no language model.
LIGHT = ["--set", "proposal_node.warmup=false", "--set", "language_node.language_backend=none"]
# What each node logs once it serves.
READY = {"proposal_node": "ready", "language_node": "ready", "grasp_target_node": "grasp targets:"}


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process from /proc, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces: fields after it, from 'state' on
    return fields[0], int(fields[19])


def _children(pid: int) -> dict[int, int]:
    """Every descendant of ``pid``: {pid: start time} (the start time tells a reused pid apart)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(text[text.rindex(")") + 2 :].split()[1])
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found and (stat := _stat(child)) is not None:
                found[child] = stat[1]
                frontier.append(child)
    return found


def _alive(pid: int, start_time: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == start_time and stat[0] != "Z"


class Up:
    """`python -m chatrex_ros up ...` in the background, its output collected line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatrex_ros", "up", *LIGHT, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.nodes: dict[int, int] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(
        self, nodes: tuple[str, ...] = ("proposal_node", "language_node"), timeout: float = 30.0
    ) -> dict[int, int]:
        """Until every node logged that it serves; returns (and remembers) the node processes."""

        def ready(node: str) -> bool:
            return any(line.startswith(f"[{node}]") and READY[node] in line for line in list(self.lines))

        try:
            wait_until(lambda: all(map(ready, nodes)) or self.process.poll() is not None, timeout, "nodes ready")
        except AssertionError:
            raise AssertionError(self.output) from None
        assert self.process.poll() is None, self.output
        self.nodes = _children(self.process.pid)
        assert len(self.nodes) >= len(nodes), (self.nodes, self.output)
        return self.nodes

    def assert_nodes_gone(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(pid, start) for pid, start in self.nodes.items()):
            time.sleep(0.05)
        left = [pid for pid, start in self.nodes.items() if _alive(pid, start)]
        assert not left, f"node processes {left} outlived `up`:\n{self.output}"

    def close(self) -> None:
        """Whatever happened: no `up` and no node left behind."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for pid, start in self.nodes.items():
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(timeout=2.0)

    def __enter__(self) -> Up:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture()
def client():
    client = RosClient("test_up_client")
    yield client
    client.close()


# ---- overrides reach the nodes ----


@pytest.mark.ros
def test_set_and_config_values_are_the_running_nodes_parameters(tmp_path, client) -> None:
    config = tmp_path / "robot.yaml"
    config.write_text(
        yaml.safe_dump({"/**/language_node": {"ros__parameters": {"queue_size": 7, "image_qos": {"depth": 2}}}})
    )
    with Up(
        "--config", str(config), "--set", "proposal_node.min_score=0.55", "--set", "proposal_node.image_qos.depth=3"
    ) as up:
        up.wait_ready()
        assert get_parameters(client, "/chatrex/proposal_node", "min_score", "warmup", "image_qos.depth") == {
            "min_score": 0.55,
            "warmup": False,
            "image_qos.depth": 3,
        }
        assert get_parameters(client, "/chatrex/language_node", "queue_size", "image_qos.depth") == {
            "queue_size": 7,
            "image_qos.depth": 2,
        }


@pytest.mark.ros
def test_a_bare_node_name_in_the_config_means_the_graphs_node_and_says_so(tmp_path, client) -> None:
    config = tmp_path / "plain.yaml"
    config.write_text(yaml.safe_dump({"language_node": {"ros__parameters": {"queue_size": 6}}}))
    with Up("--config", str(config)) as up:
        up.wait_ready()
        assert get_parameters(client, "/chatrex/language_node", "queue_size") == {"queue_size": 6}
        assert "'language_node' is read as /chatrex/language_node" in up.output
        assert "'/**/language_node'" in up.output


@pytest.mark.ros
def test_grasp_node_runs_in_the_graph_namespace_with_its_camera_inputs_remapped(client) -> None:
    with Up("--grasp", "--depth", "/cam/depth", "--color-info", "/cam/color/info") as up:
        up.wait_ready(("proposal_node", "language_node", "grasp_target_node"))
        expected = {
            "/chatrex/answer",
            "/chatrex/proposals",
            "/cam/depth",
            "/camera/camera/aligned_depth_to_color/camera_info",
            "/cam/color/info",
        }

        def subscriptions() -> set[str]:
            found = client.node.get_subscriber_names_and_types_by_node("grasp_target_node", "/chatrex")
            return {topic for topic, _ in found}

        # Asking about a node that is not discovered yet raises; wait for the node first.
        wait_until(
            lambda: ("grasp_target_node", "/chatrex") in client.node.get_node_names_and_namespaces(),
            10,
            "grasp_target_node in /chatrex",
        )
        try:
            wait_until(lambda: expected <= subscriptions(), 10, "grasp_target_node's subscriptions")
        except AssertionError:
            raise AssertionError(f"{subscriptions()} lacks {expected - subscriptions()}") from None


# ---- mistakes stop `up` before anything starts ----


@pytest.mark.parametrize(
    ("arguments", "config", "expected"),
    [
        (
            ["--set", "language_node.bogus=1"],
            None,
            ["unknown parameter 'bogus'", "the parameters of language_node are:", "queue_size", "use_sim_time"],
        ),
        (
            ["--set", "nosuchnode.x=1"],
            None,
            ["unknown node 'nosuchnode'", "proposal_node, language_node, grasp_target_node"],
        ),
        (["--set", "proposal_node.max_proposals=500"], None, ["max_proposals must be <= 100, got 500"]),
        (["--set", "grasp_target_node.margin=2"], None, ["margin must be <= 0.45"]),  # checked without --grasp
        (
            [],
            {"/**/langauge_node": {"ros__parameters": {"queue_size": 7}}},
            ["'/**/langauge_node' applies to no node", "/chatrex/language_node", "'/**/language_node'"],
        ),
        (
            [],
            {"/**": {"ros__parameters": {"min_score": 0.5}}},
            ["/** (for /chatrex/language_node): unknown parameter 'min_score'"],
        ),
    ],
)
def test_mistakes_exit_2_and_start_nothing(tmp_path, monkeypatch, capsys, arguments, config, expected) -> None:
    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    if config is not None:
        path = tmp_path / "robot.yaml"
        path.write_text(yaml.safe_dump(config))
        arguments = [*arguments, "--config", str(path)]
    assert main(["up", *arguments]) == 2
    message = capsys.readouterr().err
    assert "nothing started" in message
    for part in expected:
        assert part in message, message


def test_use_sim_time_is_accepted_for_every_node_and_dry_run_shows_the_resolved_parameters(capsys) -> None:
    arguments = [f"--set={node}.use_sim_time=true" for node in ("proposal_node", "language_node", "grasp_target_node")]
    assert main(["up", "--dry-run", "--grasp", "--set", "proposal_node.min_score=0.55", *arguments]) == 0
    printed = capsys.readouterr().out
    # Each node: its command line, then its params file.
    documents = [yaml.safe_load(part.strip().split("\n", 1)[1]) for part in printed.split("\n\n") if part.strip()]
    parameters = {name: section["ros__parameters"] for document in documents for name, section in document.items()}
    assert set(parameters) == {"/chatrex/proposal_node", "/chatrex/language_node", "/chatrex/grasp_target_node"}
    assert all(values["use_sim_time"] is True for values in parameters.values())
    assert parameters["/chatrex/proposal_node"]["min_score"] == 0.55
    assert parameters["/chatrex/language_node"]["queue_size"] == 4  # from config/chatrex.yaml
    assert "color/camera_info:=/camera/camera/color/camera_info" in printed


def test_dry_run_shows_the_dds_settings_of_a_graph_across_machines(capsys, monkeypatch) -> None:
    for name in FASTDDS_PROFILE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert main(["up", "--dry-run", "--discovery-server", "192.168.1.10:11811"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if " -m chatrex_ros.ros." in line]
    assert len(commands) == 2
    for command in commands:
        assert "ROS_DISCOVERY_SERVER=192.168.1.10:11811" in command and "fastdds_multihost.xml" in command
    assert main(["up", "--dry-run", "--discovery-server", "192.168.1.10"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def _dry_run_parameters(printed: str) -> dict[str, dict]:
    documents = [yaml.safe_load(part.strip().split("\n", 1)[1]) for part in printed.split("\n\n") if part.strip()]
    return {name: section["ros__parameters"] for document in documents for name, section in document.items()}


def test_on_demand_sets_both_nodes_and_a_set_still_wins(capsys) -> None:
    assert main(["up", "--dry-run"]) == 0
    default = _dry_run_parameters(capsys.readouterr().out)
    assert default["/chatrex/proposal_node"]["mode"] == "continuous"
    assert default["/chatrex/language_node"]["proposals_on_demand"] is False
    assert main(["up", "--dry-run", "--on-demand"]) == 0
    on_demand = _dry_run_parameters(capsys.readouterr().out)
    assert on_demand["/chatrex/proposal_node"]["mode"] == "on_demand"
    assert on_demand["/chatrex/language_node"]["proposals_on_demand"] is True
    assert main(["up", "--dry-run", "--on-demand", "--set", "language_node.proposals_on_demand=false"]) == 0
    assert _dry_run_parameters(capsys.readouterr().out)["/chatrex/language_node"]["proposals_on_demand"] is False


# ---- no node outlives `up` ----


@pytest.mark.ros
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_stops_every_node_and_exits_0(signum) -> None:
    with Up() as up:
        up.wait_ready()
        up.process.send_signal(signum)
        assert up.process.wait(timeout=20) == 0, up.output
        up.assert_nodes_gone()
        up._reader.join(timeout=2.0)
        assert f"{signal.Signals(signum).name}: stopping the graph" in up.output


@pytest.mark.ros
def test_nodes_do_not_outlive_a_killed_up() -> None:
    with Up() as up:
        up.wait_ready()
        up.process.send_signal(signal.SIGKILL)
        assert up.process.wait(timeout=10) == -signal.SIGKILL
        up.assert_nodes_gone()
    leftover = list(Path(tempfile.gettempdir()).glob(f"chatrex_up_{up.process.pid}_*"))
    assert leftover  # a killed up cannot remove its parameter files: the next up does
    assert set(leftover) <= set(remove_stale_params_dirs()) and not any(path.exists() for path in leftover)
