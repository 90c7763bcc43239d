"""The core, the models and the evaluation run in plain Python: importing them never loads rclpy or messages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chatrex_ros"
ROS_IMPORTS = (
    "rclpy",
    "sensor_msgs",
    "std_msgs",
    "builtin_interfaces",
    "rosgraph_msgs",
    "chatrex_ros.msg",
    "chatrex_ros.srv",
    "chatrex_ros.action",
    "chatrex_ros.ros",
)
REPLAY_PUBLISHER = "chatrex_ros.replay.publisher"

ROS_FREE_MODULES = [
    "chatrex_ros.core.protocol",
    "chatrex_ros.core.proposals",
    "chatrex_ros.core.answering",
    "chatrex_ros.core.grasp",
    "chatrex_ros.core.grasp_pairing",
    "chatrex_ros.core.frame_cache",
    "chatrex_ros.core.images",
    "chatrex_ros.core.overlays",
    "chatrex_ros.core.stamps",
    "chatrex_ros.core.time_jumps",
    "chatrex_ros.params_file",
    "chatrex_ros.names",
    "chatrex_ros.commands.exit_codes",
    "chatrex_ros.models.base",
    "chatrex_ros.models.registry",
    "chatrex_ros.models.settings",
    "chatrex_ros.models.selective_search",
    "chatrex_ros.models.upn",
    "chatrex_ros.models.chatrex",
    "chatrex_ros.models.checkpoint_scan",
    "chatrex_ros.doctor",
    "chatrex_ros.parameters",
    "chatrex_ros.node_parameters",
    "chatrex_ros.launcher",
    "chatrex_ros.eval.metrics",
    "chatrex_ros.eval.scoring",
    "chatrex_ros.eval.bagio",
    "chatrex_ros.eval.make_bag",
    "chatrex_ros.eval.offline",
    "chatrex_ros.eval.recorded",
    "chatrex_ros.eval.report",
    "chatrex_ros.eval.sample",
    "chatrex_ros.replay",
    "chatrex_ros.replay.options",
    "chatrex_ros.replay.plan",
    "chatrex_ros.replay.clock",
    "chatrex_ros.replay.pacing",
    "chatrex_ros.replay.progress",
    "chatrex_ros.replay.recorder",
    "chatrex_ros.replay.report",
]


def test_ros_free_layers_do_not_import_ros_or_heavy_model_libraries() -> None:
    script = (
        "import importlib, sys\n"
        f"for name in {ROS_FREE_MODULES!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('rclpy', 'sensor_msgs', 'std_msgs', 'torch', 'onnxruntime', 'tensorrt', 'transformers') "
        "or m.startswith('chatrex_ros.msg') or m.startswith('chatrex_ros.ros'))\n"
        "print(' '.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported at module load: {result.stdout.strip()}"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside a function (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_only_the_replay_publisher_talks_to_ros() -> None:
    modules = sorted((PACKAGE / "replay").glob("*.py"))
    assert PACKAGE / "replay" / "publisher.py" in modules
    for path in modules:
        ros = sorted(name for name in _imports(path) if _matches(name, ROS_IMPORTS))
        if path.name == "publisher.py":
            assert any(_matches(name, ("rclpy",)) for name in ros), "the publisher is the replay's ROS side"
        else:
            assert ros == [], f"{path.relative_to(PACKAGE.parent)} imports {ros}: only the publisher may"
    listed = {name for name in ROS_FREE_MODULES if name.startswith("chatrex_ros.replay")}
    expected = {"chatrex_ros.replay"} | {f"chatrex_ros.replay.{p.stem}" for p in modules if p.stem != "__init__"}
    assert listed == expected - {REPLAY_PUBLISHER}, "every ROS-free replay module is import-checked above"


def test_the_evaluation_imports_neither_the_ros_layer_nor_the_replay_publisher() -> None:
    for path in sorted((PACKAGE / "eval").glob("*.py")):
        bad = sorted(n for n in _imports(path) if _matches(n, ROS_IMPORTS + (REPLAY_PUBLISHER,)))
        assert bad == [], f"{path.relative_to(PACKAGE.parent)} imports {bad}"
