"""The graph across two hosts: network namespaces joined by a veth pair (test/netns.py), over real DDS.

Host 0 runs the camera TEST DOUBLE (1280x720 frames) and proposal_node with a slow proposer TEST DOUBLE, and asks
with `chatrex-ros ask`; host 1 runs language_node with the scripted model TEST DOUBLE. An answer OK means the
frames, the proposals, the query and the answer all crossed the link. With ROS_DISCOVERY_SERVER the nodes are
discovery clients of a Fast DDS discovery server (`fastdds discovery`, from the ros-fastdds wheel) and find
each other only through it: pointed at an address where no server runs, the two hosts never meet.

Multicast itself cannot be switched off here: there is no iptables/nft, and Linux sends multicast out of the
interface DDS chooses whatever that interface's flags and routes say. The absent-server case shows instead that
nothing but the server brings the hosts together. Skipped, with the reason, where network namespaces cannot be
made (not root, no iproute2).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from netns import TwoHosts, log_file, unavailable

from chatrex_ros.paths import config_file

pytestmark = pytest.mark.ros
REASON = unavailable()
if REASON is not None:
    pytest.skip(f"no network namespaces here: {REASON}", allow_module_level=True)

TEST_DIR = Path(__file__).resolve().parent
DISCOVERY_PORT = 11811


def environment(discovery_server: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",  # the namespaces hold nothing but the veth link
            "FASTDDS_DEFAULT_PROFILES_FILE": str(config_file("fastdds_multihost.xml")),
            "RMW_FASTRTPS_USE_QOS_FROM_XML": "0",
        }
    )
    env.pop("ROS_DISCOVERY_SERVER", None)
    if discovery_server:
        env["ROS_DISCOVERY_SERVER"] = discovery_server
    return env


def node_command(module: str, params: dict, directory: Path) -> list[str]:
    path = directory / f"{module.rsplit('.', 1)[1]}.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return [sys.executable, "-m", module, "--ros-args", "--params-file", str(path), "-r", "__ns:=/chatrex"]


def start_graph(hosts: TwoHosts, env: dict[str, str], directory: Path) -> None:
    camera = [sys.executable, str(TEST_DIR / "camera_process.py"), "/chatrex/image", "5", "1280", "720"]
    hosts.popen(0, camera, env, log_file(directory, "camera"))
    proposer = {
        "backend": "python:doubles.slow_proposer:SlowProposer",
        "backend_options": json.dumps({"delay_s": 0.1}),
    }
    hosts.popen(0, node_command("chatrex_ros.ros.proposal_node", proposer, directory), env, log_file(directory, "p"))
    language = {
        "language_backend": "python:doubles.scripted_model:ScriptedModel",
        "backend_options": json.dumps({"answer": "<ground>object</ground><objects><obj3></objects>"}),
    }
    hosts.popen(1, node_command("chatrex_ros.ros.language_node", language, directory), env, log_file(directory, "l"))


def ask(hosts: TwoHosts, env: dict[str, str], wait_s: float) -> tuple[int, str]:
    """`chatrex-ros ask` on host 0; (exit code, its output)."""
    command = [sys.executable, "-m", "chatrex_ros", "ask", "object", "--json", "--wait-for-node", str(wait_s)]
    result = hosts.run(0, command, env, timeout=wait_s + 90)
    return result.returncode, result.stdout + result.stderr


def logs(directory: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(directory.glob("*.log")))


@pytest.fixture
def directory():
    path = Path(tempfile.mkdtemp(prefix="chatrex_multihost_"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_query_from_the_robot_is_answered_by_the_language_node_on_the_other_host(directory) -> None:
    with TwoHosts() as hosts:
        env = environment()
        start_graph(hosts, env, directory)
        code, output = ask(hosts, env, wait_s=60)
        assert code == 0, output + logs(directory)
        answer = json.loads(output[output.index("{") :])
        assert answer["status"] == "OK" and [d["index"] for d in answer["detections"]] == [3]
        assert answer["num_proposals"] > 0, "the proposals crossed the link"


def test_with_a_discovery_server_the_hosts_meet_only_through_it(directory) -> None:
    server_address = f"{TwoHosts().addresses[0]}:{DISCOVERY_PORT}"
    with TwoHosts() as hosts:
        nobody = environment(server_address)  # discovery clients of a server that is not running
        start_graph(hosts, nobody, directory)
        code, output = ask(hosts, nobody, wait_s=8)
        assert code == 4, "without the server the discovery clients must not find each other: " + output

    with TwoHosts() as hosts:
        # The documented command (Fast DDS's own tool; in the PyPI install it needs the [multihost] extra's psutil).
        server = [
            shutil.which("fastdds") or "fastdds",
            "discovery",
            "-l",
            hosts.addresses[0],
            "-p",
            str(DISCOVERY_PORT),
        ]
        hosts.popen(0, server, os.environ, log_file(directory, "discovery_server"))
        time.sleep(1.0)
        served = environment(server_address)
        start_graph(hosts, served, directory)
        code, output = ask(hosts, served, wait_s=60)
        assert code == 0, output + logs(directory)
        assert json.loads(output[output.index("{") :])["status"] == "OK"
