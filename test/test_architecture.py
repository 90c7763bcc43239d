"""The core, the models and the evaluation run in plain Python: importing them never loads rclpy or messages."""

from __future__ import annotations

import subprocess
import sys

ROS_FREE_MODULES = [
    "chatrex_ros.core.protocol",
    "chatrex_ros.core.proposals",
    "chatrex_ros.core.answering",
    "chatrex_ros.core.grasp",
    "chatrex_ros.core.grasp_pairing",
    "chatrex_ros.core.frame_cache",
    "chatrex_ros.core.images",
    "chatrex_ros.core.stamps",
    "chatrex_ros.core.time_jumps",
    "chatrex_ros.params_file",
    "chatrex_ros.models.base",
    "chatrex_ros.models.registry",
    "chatrex_ros.models.settings",
    "chatrex_ros.models.selective_search",
    "chatrex_ros.models.upn",
    "chatrex_ros.models.upn_backends",
    "chatrex_ros.models.chatrex",
    "chatrex_ros.parameters",
    "chatrex_ros.launcher",
    "chatrex_ros.eval.metrics",
    "chatrex_ros.eval.scoring",
    "chatrex_ros.eval.bagio",
    "chatrex_ros.eval.offline",
    "chatrex_ros.eval.recorded",
    "chatrex_ros.eval.report",
    "chatrex_ros.eval.sample",
    "chatrex_ros.eval.replay_plan",
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
