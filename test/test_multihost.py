"""The graph across two hosts: network namespaces joined by a veth pair (test/netns.py), over real DDS.

Host 0 runs the camera TEST DOUBLE (1280x720 frames) and proposal_node with a slow proposer TEST DOUBLE, and asks
with `chatrex-ros ask`; host 1 runs language_node with the scripted model TEST DOUBLE. An answer OK means the
frames, the proposals, the query and the answer all crossed the link. With ROS_DISCOVERY_SERVER the nodes are
discovery clients of a Fast DDS discovery server (`fastdds discovery`, from the ros-fastdds wheel) and find
each other only through it: pointed at an address where no server runs, the two hosts never meet.

Multicast cannot be switched off on a veth link here (no iptables/nft; Linux sends multicast out of the
interface DDS chooses whatever its flags say), so the multicast-off case puts a router between the hosts
(`TwoHosts(routed=True)`): unicast is forwarded, multicast is not, as on Wi-Fi, VPNs and routed subnets. There,
without a server the graph never meets, and `chatrex-ros up --discovery-server` (the installed command, its
own profile and environment) joins it. Skipped, with the reason, where network namespaces cannot be made (not
root, no iproute2).
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
from netns import ADDRESSES, ROUTED_ADDRESSES, TwoHosts, log_file, unavailable
from test_robot_path import graph_args
from user_path import CHATREX_ROS

from chatrex_ros.launcher import FASTDDS_PROFILE_VARIABLES, fastdds_profile_variable
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
            fastdds_profile_variable(): str(config_file("fastdds_multihost.xml")),
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
    server_address = f"{ADDRESSES[0]}:{DISCOVERY_PORT}"
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
            "-i",
            "0",
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


def discovery_server(hosts: TwoHosts, directory: Path) -> None:
    """The documented command (Fast DDS's own tool) on host 0."""
    command = [shutil.which("fastdds") or "fastdds", "discovery", "-i", "0", "-l", hosts.addresses[0]]
    command += ["-p", str(DISCOVERY_PORT)]
    hosts.popen(0, command, os.environ, log_file(directory, "discovery_server"))
    time.sleep(1.0)


def test_across_a_router_multicast_discovery_fails_and_up_discovery_server_joins_the_hosts(directory) -> None:
    """No multicast between the hosts: the graph meets only through `chatrex-ros up --discovery-server`."""
    with TwoHosts(routed=True) as hosts:
        multicast = environment()  # simple discovery: multicast, which the router does not forward
        start_graph(hosts, multicast, directory)
        code, output = ask(hosts, multicast, wait_s=8)
        assert code == 4, "multicast discovery must not cross the router: " + output

    server_address = f"{ROUTED_ADDRESSES[0]}:{DISCOVERY_PORT}"
    with TwoHosts(routed=True) as hosts:
        discovery_server(hosts, directory)
        # Host 1 (the GPU machine) runs the whole graph with `up`, which sets the profile and the discovery
        # environment itself; host 0 (the robot) has the camera and asks, as discovery clients of the server.
        graph_env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONPATH=str(TEST_DIR))
        for name in (*FASTDDS_PROFILE_VARIABLES, "RMW_FASTRTPS_USE_QOS_FROM_XML", "ROS_DISCOVERY_SERVER"):
            graph_env.pop(name, None)
        up = [CHATREX_ROS, "up", "--discovery-server", server_address, *graph_args("/robot/image", 0.1)]
        hosts.popen(1, up, graph_env, log_file(directory, "up"))
        robot = environment(server_address)
        camera = [sys.executable, str(TEST_DIR / "camera_process.py"), "/robot/image", "5", "640", "480"]
        hosts.popen(0, camera, robot, log_file(directory, "camera"))
        code, output = ask(hosts, robot, wait_s=60)
        assert code == 0, output + logs(directory)
        answer = json.loads(output[output.index("{") :])
        assert answer["status"] == "OK" and answer["num_proposals"] > 0, "frames, proposals and the answer crossed"
