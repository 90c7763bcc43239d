"""launch/chatrex.launch.py, config/chatrex.yaml and `chatrex-ros up` describe one and the same graph.

launch/launch_ros are not installable here, so the launch file is loaded with small recording stand-ins for
those modules (test doubles of ROS tooling outside the package) and its description is checked.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from chatrex_ros.launcher import GRAPH, NAMESPACE, dds_environment, load_config, plan_graph
from chatrex_ros.parameters import flatten
from chatrex_ros.ros import grasp_target_node, language_node, proposal_node

ROOT = Path(__file__).resolve().parent.parent
NODE_PARAMETERS = {"proposal_node": proposal_node.PARAMETERS, "language_node": language_node.PARAMETERS,
                   "grasp_target_node": grasp_target_node.PARAMETERS}


class Recorded:
    """Stand-in for any launch action/substitution: remembers its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


def _stub_modules(monkeypatch) -> None:
    modules = {
        "launch": {"LaunchDescription": Recorded},
        "launch.actions": {"DeclareLaunchArgument": Recorded, "SetEnvironmentVariable": Recorded},
        "launch.conditions": {"IfCondition": Recorded},
        "launch.substitutions": {"LaunchConfiguration": Recorded, "EnvironmentVariable": Recorded},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Recorded},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    import ament_index_python.packages as packages

    monkeypatch.setattr(packages, "get_package_share_directory", lambda name: f"/opt/share/{name}")


@pytest.fixture()
def description(monkeypatch):
    _stub_modules(monkeypatch)
    spec = importlib.util.spec_from_file_location("chatrex_launch", ROOT / "launch" / "chatrex.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def _nodes(description) -> dict[str, Recorded]:
    return {a.kwargs["name"]: a for a in description.args[0] if "executable" in a.kwargs}


def _arguments(description) -> dict[str, Recorded]:
    return {a.args[0]: a for a in description.args[0] if "default_value" in a.kwargs}


def _value(substitution, arguments) -> str:
    """Resolve a recorded LaunchConfiguration to its argument's default."""
    if isinstance(substitution, Recorded) and substitution.args and substitution.args[0] in arguments:
        return arguments[substitution.args[0]].kwargs["default_value"]
    return substitution


def test_every_executable_is_an_entry_point_and_a_ros2_run_script(description) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for name, node in _nodes(description).items():
        executable = node.kwargs["executable"]
        assert node.kwargs["package"] == "chatrex_ros"
        assert f'{executable} = "chatrex_ros.ros.{executable}:main"' in pyproject
        assert f"scripts/{executable}" in cmake and (ROOT / "scripts" / executable).is_file()
        module = importlib.import_module(f"chatrex_ros.ros.{executable}")
        assert callable(module.main)


def test_launch_file_matches_the_launcher_graph(description) -> None:
    nodes, arguments = _nodes(description), _arguments(description)
    assert set(nodes) == {spec.name for spec in GRAPH}
    for spec in GRAPH:
        node = nodes[spec.name]
        assert node.kwargs["namespace"] == NAMESPACE
        remaps = {source: _value(target, arguments) for source, target in node.kwargs["remappings"]}
        assert remaps == dict(spec.remaps), spec.name
        assert ("condition" in node.kwargs) == spec.optional
    assert arguments["params_file"].kwargs["default_value"] == "/opt/share/chatrex_ros/config/chatrex.yaml"


def test_launch_overrides_are_declared_parameters(description) -> None:
    for name, node in _nodes(description).items():
        declared = {spec.name for spec in NODE_PARAMETERS[name]}
        for entry in node.kwargs["parameters"][1:]:
            assert set(entry) <= declared, name


def test_config_entries_are_declared_with_the_right_type() -> None:
    config = yaml.safe_load((ROOT / "config" / "chatrex.yaml").read_text())
    for node_name, specs in NODE_PARAMETERS.items():
        if node_name not in config:
            continue
        by_name = {spec.name: spec for spec in specs}
        for name, value in flatten(config[node_name]["ros__parameters"]).items():
            assert name in by_name, f"{node_name}.{name} is not declared by the node"
            assert by_name[name].validate(value) is None, by_name[name].validate(value)


def test_config_defaults_equal_the_declared_defaults() -> None:
    """So that `ros2 run` without a params file behaves like the launched graph."""
    config = yaml.safe_load((ROOT / "config" / "chatrex.yaml").read_text())
    for node_name, specs in NODE_PARAMETERS.items():
        flat = flatten(config.get(node_name, {}).get("ros__parameters", {}))
        for spec in specs:
            if spec.name in flat:
                assert flat[spec.name] == spec.default, f"{node_name}.{spec.name}"


def test_up_plans_the_same_graph_with_overrides() -> None:
    planned = plan_graph(load_config(None), {"proposal_node": {"backend": "onnxruntime"}}, "/cam/rgb", with_grasp=False)
    assert [p.spec.name for p in planned] == ["proposal_node", "language_node"]
    assert planned[0].parameters["backend"] == "onnxruntime" and planned[0].remaps == {"image": "/cam/rgb"}
    command = planned[1].command(Path("/tmp/p.yaml"))
    assert command[1:3] == ["-m", "chatrex_ros.ros.language_node"]
    assert "__ns:=/chatrex" in command and "image:=/cam/rgb" in command


def test_up_uses_the_shipped_fastdds_profile_unless_one_is_set() -> None:
    env = dds_environment({})
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).name == "fastdds.xml"
    assert env["RMW_FASTRTPS_USE_QOS_FROM_XML"] == "0"
    assert dds_environment({"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"})["FASTDDS_DEFAULT_PROFILES_FILE"] == "/mine.xml"


@pytest.mark.ros
def test_up_starts_the_graph_and_stops_cleanly_on_ctrl_c(tmp_path) -> None:
    import signal

    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump({"proposal_node": {"ros__parameters": {"warmup": False}}}))
    process = subprocess.Popen([sys.executable, "-m", "chatrex_ros", "up", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum("ready" in line for line in lines) < 2:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
    assert any(line.startswith("[proposal_node]") and "ready" in line for line in lines), "".join(lines)
    assert any(line.startswith("[language_node]") and "ready" in line for line in lines), "".join(lines)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, "".join(lines) + output
    assert "stopping the graph" in output
