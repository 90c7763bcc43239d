"""An override that names no parameter (rclpy ignores it silently) is warned about, with the closest name.

Over DDS: a real proposal_node started with a misspelled key in its params file.
"""

from __future__ import annotations

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from ros_harness import NodeProcess, RosClient, wait_until

pytestmark = pytest.mark.ros


def test_a_misspelled_override_is_warned_once_with_the_closest_name_and_shown_on_diagnostics() -> None:
    node = NodeProcess(
        "chatrex_ros.ros.proposal_node",
        "proposal_node",
        params={"warmup": False, "min_scor": 0.5, "zzz_unrelated": 1, "qos_overrides./x.publisher.depth": 3},
        namespace="/unknown_params",
    )
    client = RosClient("unknown_params_client")
    try:
        diagnostics = client.subscribe(DiagnosticArray, "/diagnostics")

        def status() -> DiagnosticStatus | None:
            for array in list(diagnostics):
                for entry in array.status:
                    if "unknown_params" in entry.name or "unknown_params" in entry.hardware_id:
                        return entry
            return None

        wait_until(lambda: status() is not None or not node.alive(), 30, "the node's /diagnostics")
        assert node.alive(), node.output()
        found = status()
        assert found is not None and found.level == DiagnosticStatus.WARN, found
        values = {kv.key: kv.value for kv in found.values}
        assert "'min_scor' (did you mean 'min_score'?)" in values["condition.unknown_parameters"]
        assert "zzz_unrelated" in values["condition.unknown_parameters"]
        output = node.output()
        warned = [line for line in output.splitlines() if "matches no parameter" in line]
        assert len(warned) == 2, output  # once each; qos_overrides.* are rclpy's and not warned about
        assert any("did you mean 'min_score'" in line for line in warned)
        assert not any("zzz_unrelated" in line and "did you mean" in line for line in warned)
    finally:
        client.close()
        assert node.stop() == 0, node.output()
