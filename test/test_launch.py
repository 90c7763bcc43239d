"""launch/chatrex.launch.py, config/chatrex.yaml and `chatrex-ros up` describe one and the same graph.

launch/launch_ros are not installable here, so the launch file is loaded with small recording stand-ins for
those modules (test doubles of ROS tooling outside the package) and its description is checked; its
OpaqueFunction is called with a stand-in context holding the launch arguments.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatrex_ros.launcher import (
    FASTDDS_PROFILE_VARIABLES,
    GRAPH,
    NAMESPACE,
    GraphConfig,
    GraphConfigError,
    dds_environment,
    fastdds_major,
    fastdds_profile_variable,
    load_config,
    plan_graph,
)
from chatrex_ros.node_parameters import NODE_TABLES
from chatrex_ros.parameters import node_section
from chatrex_ros.params_file import load_sections, matches, node_parameters, sections

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "chatrex.yaml"
NODE_PARAMETERS = NODE_TABLES
REALSENSE = {
    "depth": "/camera/camera/aligned_depth_to_color/image_raw",
    "depth/camera_info": "/camera/camera/aligned_depth_to_color/camera_info",
    "color/camera_info": "/camera/camera/color/camera_info",
}


class Recorded:
    """Stand-in for any launch action/substitution: remembers its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class LaunchConfigurationStandIn(Recorded):
    """As launch's LaunchConfiguration: ``perform`` reads the argument's value from the context."""

    def perform(self, context) -> str:
        return context.launch_configurations[self.args[0]]


def _stub_modules(monkeypatch) -> None:
    modules = {
        "launch": {"LaunchDescription": Recorded},
        "launch.actions": {
            "DeclareLaunchArgument": Recorded,
            "SetEnvironmentVariable": Recorded,
            "OpaqueFunction": Recorded,
        },
        "launch.conditions": {"IfCondition": Recorded},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfigurationStandIn, "EnvironmentVariable": Recorded},
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


def _arguments(description) -> dict[str, Recorded]:
    return {a.args[0]: a for a in description.args[0] if "default_value" in a.kwargs}


def _nodes(description, **given: str) -> dict[str, Recorded]:
    """The Node actions the OpaqueFunction builds for these launch arguments (the others at their defaults)."""
    values: dict[str, Any] = {name: a.kwargs["default_value"] for name, a in _arguments(description).items()}
    unknown = set(given) - set(values)
    assert not unknown, f"not launch arguments: {unknown}"
    context = types.SimpleNamespace(launch_configurations={**values, **given})
    functions = [a.kwargs["function"] for a in description.args[0] if "function" in a.kwargs]
    assert len(functions) == 1
    return {node.kwargs["name"]: node for node in functions[0](context)}


def test_every_executable_is_an_entry_point_and_a_ros2_run_script(description) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for node in _nodes(description).values():
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
        expected = dict(spec.remaps)
        if "image" in expected:  # and the image's compressed stream, where image_transport puts it
            expected["image/compressed"] = expected["image"] + "/compressed"
        assert dict(node.kwargs["remappings"]) == expected, spec.name
        assert ("condition" in node.kwargs) == spec.optional
    assert arguments["params_file"].kwargs["default_value"] == "/opt/share/chatrex_ros/config/chatrex.yaml"
    assert dict(next(spec for spec in GRAPH if spec.name == "grasp_target_node").remaps) == REALSENSE


def test_without_launch_arguments_the_params_file_alone_configures_the_nodes(description) -> None:
    for name, node in _nodes(description).items():
        assert node.kwargs["parameters"] == ["/opt/share/chatrex_ros/config/chatrex.yaml"], name


def test_given_launch_arguments_are_applied(description) -> None:
    nodes = _nodes(
        description,
        params_file="/robot.yaml",
        proposal_backend="onnxruntime",
        language_backend="chatrex",
        model_path="/models/ChatRex-7B",
        image_topic="/cam/rgb",
        depth_topic="/d",
        depth_info_topic="/d/info",
        color_info_topic="/c/info",
    )
    assert nodes["proposal_node"].kwargs["parameters"] == ["/robot.yaml", {"backend": "onnxruntime"}]
    assert nodes["language_node"].kwargs["parameters"] == [
        "/robot.yaml",
        {"language_backend": "chatrex", "model_path": "/models/ChatRex-7B"},
    ]
    assert nodes["grasp_target_node"].kwargs["parameters"] == ["/robot.yaml"]
    camera = {"image": "/cam/rgb", "image/compressed": "/cam/rgb/compressed"}
    assert dict(nodes["proposal_node"].kwargs["remappings"]) == camera
    assert dict(nodes["language_node"].kwargs["remappings"]) == camera
    assert dict(nodes["grasp_target_node"].kwargs["remappings"]) == {
        "depth": "/d",
        "depth/camera_info": "/d/info",
        "color/camera_info": "/c/info",
    }
    only_model = _nodes(description, model_path="/m")
    assert only_model["language_node"].kwargs["parameters"][1] == {"model_path": "/m"}


def test_on_demand_sets_the_same_parameters_as_up(description) -> None:
    from chatrex_ros.commands.graph import ON_DEMAND_SETTINGS, parse_overrides

    nodes = _nodes(description, on_demand="true")
    expected = {
        node: {k: yaml.safe_load(v) for k, v in values.items()}
        for node, values in parse_overrides(ON_DEMAND_SETTINGS).items()
    }
    for name in ("proposal_node", "language_node"):
        assert nodes[name].kwargs["parameters"][1] == expected[name], name
    assert all(len(node.kwargs["parameters"]) == 1 for node in _nodes(description, on_demand="false").values())


def test_launch_overrides_are_declared_parameters(description) -> None:
    nodes = _nodes(description, proposal_backend="torch", language_backend="chatrex", model_path="/m", on_demand="true")
    for name, node in nodes.items():
        declared = {spec.name for spec in NODE_PARAMETERS[name]}
        for entry in node.kwargs["parameters"][1:]:
            assert set(entry) <= declared, name
    overridable = {
        argument.args[0] for argument in _arguments(description).values() if argument.kwargs["default_value"] == ""
    }
    # discovery_server also defaults to "": it sets the nodes' environment, not a parameter
    assert overridable == {"proposal_backend", "language_backend", "model_path", "discovery_server"}


# ---- config/chatrex.yaml ----


def test_config_entries_are_declared_with_the_right_type() -> None:
    for node_name, specs in NODE_PARAMETERS.items():
        by_name = {spec.name: spec for spec in specs}
        values = node_section(CONFIG, node_name)
        assert values, f"config/chatrex.yaml has nothing for /chatrex/{node_name}"
        for name, value in values.items():
            assert name in by_name, f"{node_name}.{name} is not declared by the node"
            assert by_name[name].validate(value) is None, by_name[name].validate(value)


def test_config_defaults_equal_the_declared_defaults() -> None:
    """So that `ros2 run` without a params file behaves like the launched graph."""
    for node_name, specs in NODE_PARAMETERS.items():
        flat = node_section(CONFIG, node_name)
        for spec in specs:
            if spec.name in flat:
                assert flat[spec.name] == spec.default, f"{node_name}.{spec.name}"


def test_config_sections_apply_to_the_graph_in_any_namespace_and_to_ros2_run() -> None:
    found = load_sections(CONFIG)
    assert [s.pattern for s in found] == ["/**/proposal_node", "/**/language_node", "/**/grasp_target_node"]
    for spec in GRAPH:
        for node in (f"/chatrex/{spec.name}", f"/{spec.name}", f"/robot/{spec.name}"):
            assert node_parameters(found, node) == node_section(CONFIG, spec.name), node


def test_eval_reads_the_language_node_section_of_the_shipped_config() -> None:
    """`chatrex-ros eval/demo --config` use node_section: the same values as the running node."""
    values = node_section(CONFIG, "language_node")
    assert values["language_backend"] == "none" and values["queue_size"] == 4
    assert values["image_qos.reliability"] == "best_effort"
    assert node_section(CONFIG, "/chatrex/language_node") == values


# ---- params-file matching, as rcl does it ----


@pytest.mark.parametrize(
    ("pattern", "node", "expected"),
    [
        ("/**/proposal_node", "/chatrex/proposal_node", True),
        ("/**/proposal_node", "/proposal_node", True),
        ("/**/proposal_node", "/a/b/proposal_node", True),
        ("/**", "/chatrex/proposal_node", True),
        ("chatrex/proposal_node", "/chatrex/proposal_node", True),
        ("/chatrex/proposal_node", "/chatrex/proposal_node", True),
        ("proposal_node", "/chatrex/proposal_node", False),
        ("proposal_node", "/proposal_node", True),
        ("/*/proposal_node", "/chatrex/proposal_node", True),
        ("/*/proposal_node", "/proposal_node", False),
        ("/*", "/chatrex/proposal_node", False),
        ("/*", "/proposal_node", True),
        ("/chatrex/*", "/chatrex/language_node", True),
        ("/chatrex/**", "/chatrex/proposal_node", True),
        ("/chatrex/**", "/proposal_node", False),
        ("/**/chatrex/**/proposal_node", "/a/chatrex/b/proposal_node", True),
        ("/**/**/proposal_node", "/proposal_node", True),
        ("/**/langauge_node", "/chatrex/language_node", False),
    ],
)
def test_pattern_matching(pattern: str, node: str, expected: bool) -> None:
    assert matches(pattern, node) is expected


def test_sections_apply_in_file_order_and_nested_names_join() -> None:
    document = yaml.safe_load("""
/chatrex/proposal_node: {ros__parameters: {a: 2, q: {y: 2}}}
/**: {ros__parameters: {a: 1, b: 1, q: {x: 1}}}
chatrex:
  proposal_node: {ros__parameters: {c: 3}}
/**/proposal_node: {ros__parameters: {b: 3}}
""")
    found = sections(document)
    assert [s.pattern for s in found] == ["/chatrex/proposal_node", "/**", "chatrex/proposal_node", "/**/proposal_node"]
    assert node_parameters(found, "/chatrex/proposal_node") == {"a": 1, "q.y": 2, "b": 3, "q.x": 1, "c": 3}
    assert node_parameters(found, "/proposal_node") == {"a": 1, "b": 3, "q.x": 1}


@pytest.mark.parametrize(
    "text",
    [
        "/**: {ros__parameters: 5}",
        "/**: {foo: 5}",
        "ros__parameters: {a: 1}",
        "/chatrex/prop*: {ros__parameters: {a: 1}}",
        "[1, 2]",
    ],
)
def test_malformed_params_files_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        sections(yaml.safe_load(text))


@pytest.mark.ros
def test_matching_agrees_with_rclpy(tmp_path) -> None:
    """Our reading of a params file is rclpy's, for several names and overlapping sections."""
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    text = """
/**: {ros__parameters: {a: 1, b: 1}}
/chatrex/proposal_node: {ros__parameters: {a: 2, c: 2}}
/*/proposal_node: {ros__parameters: {d: 3}}
/*: {ros__parameters: {e: 4}}
chatrex:
  language_node: {ros__parameters: {f: 5}}
/chatrex/**: {ros__parameters: {g: 6}}
/**/proposal_node: {ros__parameters: {b: 7, q: {x: 7}}}
proposal_node: {ros__parameters: {h: 8}}
"""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    found = load_sections(path)
    builtins = {"use_sim_time", "start_type_description_service"}  # rclpy declares these on every node
    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(path)])
    try:
        for namespace, name in (
            ("/chatrex", "proposal_node"),
            ("/", "proposal_node"),
            ("/chatrex", "language_node"),
            ("/a/b", "proposal_node"),
            ("/", "language_node"),
        ):
            node = Node(
                name, namespace=namespace, context=context, automatically_declare_parameters_from_overrides=True
            )
            try:
                theirs = {key: p.value for key, p in node.get_parameters_by_prefix("").items() if key not in builtins}
                ours = node_parameters(found, node.get_fully_qualified_name())
            finally:
                node.destroy_node()
            assert ours == theirs, (namespace, name)
    finally:
        rclpy.shutdown(context=context)


# ---- chatrex-ros up's plan ----


def _config(text: str, path: str = "robot.yaml") -> GraphConfig:
    return GraphConfig(Path(path), sections(yaml.safe_load(text), path))


def test_up_plans_the_same_graph_with_overrides() -> None:
    planned = plan_graph(
        load_config(None),
        {"proposal_node": {"backend": "onnxruntime", "min_score": 1}},
        {"image": "/cam/rgb"},
        with_grasp=False,
    )
    assert [p.spec.name for p in planned] == ["proposal_node", "language_node"]
    assert planned[0].parameters["backend"] == "onnxruntime" and planned[0].remaps == {
        "image": "/cam/rgb",
        "image/compressed": "/cam/rgb/compressed",  # image_transport's compressed stream of the camera topic
    }
    assert planned[0].parameters["min_score"] == 1.0 and isinstance(planned[0].parameters["min_score"], float)
    assert planned[0].params_document() == {"/chatrex/proposal_node": {"ros__parameters": planned[0].parameters}}
    command = planned[1].command(Path("/tmp/p.yaml"))
    assert command[1:3] == ["-m", "chatrex_ros.ros.language_node"]
    assert "__ns:=/chatrex" in command and "image:=/cam/rgb" in command


def test_up_grasp_remaps_all_three_camera_inputs() -> None:
    planned = plan_graph(load_config(None), with_grasp=True)
    grasp = next(p for p in planned if p.spec.name == "grasp_target_node")
    assert grasp.remaps == REALSENSE
    planned = plan_graph(load_config(None), topics={"depth": "/d", "color/camera_info": "/c"}, with_grasp=True)
    grasp = next(p for p in planned if p.spec.name == "grasp_target_node")
    assert grasp.remaps == {**REALSENSE, "depth": "/d", "color/camera_info": "/c"}
    command = grasp.command(Path("/tmp/g.yaml"))
    assert "__ns:=/chatrex" in command and "color/camera_info:=/c" in command


def test_up_reads_sections_as_rcl_does_and_bare_names_as_the_graph_nodes(tmp_path) -> None:
    path = tmp_path / "robot.yaml"
    path.write_text(
        "/**:\n  ros__parameters:\n    use_sim_time: true\n"
        "/chatrex/proposal_node:\n  ros__parameters:\n    min_score: 0.5\n"
        "language_node:\n  ros__parameters:\n    queue_size: 7\n"
    )
    config = load_config(path)
    assert config.bare_names == ["language_node"]
    planned = {p.spec.name: p.parameters for p in plan_graph(config)}
    assert planned["proposal_node"]["min_score"] == 0.5 and planned["proposal_node"]["use_sim_time"] is True
    assert planned["language_node"]["queue_size"] == 7 and planned["language_node"]["use_sim_time"] is True
    assert node_section(path, "language_node") == {"queue_size": 7}  # eval/demo read it the same way


@pytest.mark.parametrize(
    ("overrides", "text", "expected"),
    [
        (
            {"language_node": {"bogus": 1}},
            "",
            ["unknown parameter 'bogus'", "the parameters of language_node are:", "queue_size", "use_sim_time"],
        ),
        (
            {"nosuchnode": {"x": 1}},
            "",
            ["unknown node 'nosuchnode'", "proposal_node, language_node, grasp_target_node"],
        ),
        ({"proposal_node": {"max_proposals": 500}}, "", ["max_proposals must be <= 100"]),
        ({"grasp_target_node": {"selection": "nearest"}}, "", ["selection must be one of"]),
        (
            {},
            "/**/langauge_node: {ros__parameters: {queue_size: 7}}",
            ["'/**/langauge_node' applies to no node", "/chatrex/language_node"],
        ),
        (
            {},
            "/**: {ros__parameters: {min_score: 0.5}}",
            ["/** (for /chatrex/language_node): unknown parameter 'min_score'"],
        ),
        ({}, "/**/grasp_target_node: {ros__parameters: {margin: 0.9}}", ["margin must be <= 0.45"]),
    ],
)
def test_up_refuses_what_the_nodes_would_ignore_or_reject(overrides, text, expected) -> None:
    with pytest.raises(GraphConfigError) as caught:
        plan_graph(_config(text or "{}"), overrides)
    message = str(caught.value)
    for part in expected:
        assert part in message, message


def test_up_accepts_use_sim_time_for_every_node() -> None:
    overrides = {spec.name: {"use_sim_time": True} for spec in GRAPH}
    planned = plan_graph(_config("{}"), overrides, with_grasp=True)
    assert all(p.parameters["use_sim_time"] is True for p in planned)


def test_up_uses_the_shipped_fastdds_profile_unless_one_is_set() -> None:
    env = dds_environment({})
    read, other = (
        fastdds_profile_variable(),
        next(v for v in FASTDDS_PROFILE_VARIABLES if v != fastdds_profile_variable()),
    )
    assert Path(env[read]).name == "fastdds.xml"
    assert env["RMW_FASTRTPS_USE_QOS_FROM_XML"] == "0"
    assert other not in env  # Fast DDS 3 warns on every start when the Fast DDS 2 name is set
    for name in FASTDDS_PROFILE_VARIABLES:  # the user's profile, under either name, goes where it is read
        mine = dds_environment({name: "/mine.xml"})
        assert mine[read] == "/mine.xml"
        assert "RMW_FASTRTPS_USE_QOS_FROM_XML" not in mine  # their profile's QoS are theirs to use


@pytest.mark.parametrize("distribution,major", [("ros-fastdds", 3), ("ros-fastrtps", 2)])
def test_the_profile_variable_is_the_one_the_installed_fast_dds_reads(monkeypatch, distribution, major) -> None:
    import importlib.metadata

    def version(name: str) -> str:  # test double: which Fast DDS wheel is installed
        if name != distribution:
            raise importlib.metadata.PackageNotFoundError(name)
        return f"{major}.1.0"

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert fastdds_major() == major
    assert fastdds_profile_variable() == FASTDDS_PROFILE_VARIABLES[0 if major == 3 else 1]


def test_a_graph_across_hosts_gets_the_multihost_profile_and_the_discovery_server() -> None:
    spanning = dds_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}, multihost=True)
    assert Path(spanning[fastdds_profile_variable()]).name == "fastdds_multihost.xml"
    assert spanning["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET" and "ROS_DISCOVERY_SERVER" not in spanning
    served = dds_environment({}, discovery_server="10.0.0.1:11811;10.0.0.2:11811")
    assert served["ROS_DISCOVERY_SERVER"] == "10.0.0.1:11811;10.0.0.2:11811"
    assert Path(served[fastdds_profile_variable()]).name == "fastdds_multihost.xml"
    for bad in ("10.0.0.1", "10.0.0.1:0", "host:port", ":11811"):
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            dds_environment({}, discovery_server=bad)


def test_the_launch_files_discovery_server_reaches_every_node(description) -> None:
    assert all("additional_env" not in node.kwargs for node in _nodes(description).values())
    nodes = _nodes(description, discovery_server="10.0.0.1:11811")
    assert {n.kwargs["additional_env"]["ROS_DISCOVERY_SERVER"] for n in nodes.values()} == {"10.0.0.1:11811"}
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        _nodes(description, discovery_server="10.0.0.1")  # the port forgotten


@pytest.mark.ros
def test_up_starts_the_graph_and_stops_cleanly_on_ctrl_c(tmp_path) -> None:
    import signal

    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump({"/**/proposal_node": {"ros__parameters": {"warmup": False}}}))
    process = subprocess.Popen(
        [sys.executable, "-m", "chatrex_ros", "up", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
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
    finally:  # a graph left running would answer the next tests' queries
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_set_values_are_yaml_but_string_parameters_keep_their_text() -> None:
    """`--set language_node.backend_options={"a": 1}` is JSON for a string parameter, not a YAML mapping."""
    from chatrex_ros.commands.graph import parse_overrides

    overrides = parse_overrides(
        [
            'language_node.backend_options={"delay_s": 3}',
            "proposal_node.min_score=0.55",
            "proposal_node.warmup=false",
            "language_node.image_qos.depth=3",
        ]
    )
    planned = {node.spec.name: node for node in plan_graph(load_config(None), overrides)}
    language, proposal = planned["language_node"].parameters, planned["proposal_node"].parameters
    assert language["backend_options"] == '{"delay_s": 3}'
    assert language["image_qos.depth"] == 3
    assert proposal["min_score"] == 0.55 and proposal["warmup"] is False
