"""Launch the chatrex graph: proposal_node + language_node (+ grasp_target_node with grasp:=true), in /chatrex.

    ros2 launch chatrex_ros chatrex.launch.py image_topic:=/camera/color/image_raw \
        proposal_backend:=onnxruntime language_backend:=chatrex model_path:=/models/ChatRex-7B grasp:=true

Parameters come from config/chatrex.yaml (or params_file:=...). The launch arguments proposal_backend,
language_backend and model_path override their parameter only when given: they default to "" so that the params
file, not a launch-file default, decides. The topic arguments remap the nodes' inputs (defaults: RealSense
realsense-ros 4.x with align_depth.enable:=true). `chatrex-ros up` starts the same graph without the ROS CLI.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

from chatrex_ros.launcher import check_discovery_server, compressed_topic, fastdds_profile_variable
from chatrex_ros.names import NAMESPACE

# (launch argument, node, parameter, description): applied over the params file only when not empty.
PARAMETER_ARGUMENTS = (
    ("proposal_backend", "proposal_node", "backend", "selective_search | torch | onnxruntime | tensorrt"),
    ("language_backend", "language_node", "language_backend", "none | chatrex | openai"),
    ("model_path", "language_node", "model_path", "local ChatRex-7B directory"),
)

# (launch argument, default topic, description)
TOPIC_ARGUMENTS = (
    ("image_topic", "/camera/image_raw", "camera image topic"),
    ("depth_topic", "/camera/camera/aligned_depth_to_color/image_raw", "depth image aligned to the colour camera"),
    ("depth_info_topic", "/camera/camera/aligned_depth_to_color/camera_info", "camera_info of the depth image"),
    ("color_info_topic", "/camera/camera/color/camera_info", "camera_info of the colour image"),
)

# node -> (input topic of the node, launch argument remapping it)
NODE_INPUTS = {
    "proposal_node": (("image", "image_topic"),),
    "language_node": (("image", "image_topic"),),
    "grasp_target_node": (
        ("depth", "depth_topic"),
        ("depth/camera_info", "depth_info_topic"),
        ("color/camera_info", "color_info_topic"),
    ),
}
OPTIONAL_NODES = {"grasp_target_node": "grasp"}
# on_demand:=true sets these (proposals only for the frames queries ask about; `chatrex-ros up --on-demand`)
ON_DEMAND = {
    "proposal_node": {"mode": "on_demand"},
    "language_node": {"proposals_on_demand": True},
}  # node -> boolean launch argument that starts it


def _nodes(context, *args, **kwargs):
    """The Node actions, built once the launch arguments are known (an empty override is not applied)."""
    params_file = LaunchConfiguration("params_file").perform(context)
    actions = []
    for name, inputs in NODE_INPUTS.items():
        overrides = {}
        for argument, node, parameter, _ in PARAMETER_ARGUMENTS:
            value = LaunchConfiguration(argument).perform(context) if node == name else ""
            if value:
                overrides[parameter] = value
        if LaunchConfiguration("on_demand").perform(context).lower() in ("true", "1"):
            overrides.update(ON_DEMAND.get(name, {}))
        extra = {"condition": IfCondition(LaunchConfiguration(OPTIONAL_NODES[name]))} if name in OPTIONAL_NODES else {}
        discovery_server = LaunchConfiguration("discovery_server").perform(context)
        if discovery_server:  # a typo fails the launch with the expected form, not a graph that never meets
            extra["additional_env"] = {"ROS_DISCOVERY_SERVER": check_discovery_server(discovery_server)}
        actions.append(
            Node(
                package="chatrex_ros",
                executable=name,
                name=name,
                namespace=NAMESPACE,
                parameters=[params_file, overrides] if overrides else [params_file],
                remappings=_remappings(inputs, context),
                output="screen",
                **extra,
            )
        )
    return actions


def _remappings(inputs, context):
    """The inputs' remaps; ``image`` also for its compressed stream (image_transport: ``<topic>/compressed``)."""
    remaps = [(topic, LaunchConfiguration(argument).perform(context)) for topic, argument in inputs]
    return remaps + [("image/compressed", compressed_topic(target)) for topic, target in remaps if topic == "image"]


def generate_launch_description():
    share = get_package_share_directory("chatrex_ros")
    profile_variable = fastdds_profile_variable()
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=os.path.join(share, "config", "chatrex.yaml"),
            description="ROS params file for the nodes",
        ),
        *(
            DeclareLaunchArgument(name, default_value=default, description=text)
            for name, default, text in TOPIC_ARGUMENTS
        ),
        *(
            DeclareLaunchArgument(
                name, default_value="", description=f"{text} (default: the params file's {node} {param})"
            )
            for name, node, param, text in PARAMETER_ARGUMENTS
        ),
        DeclareLaunchArgument("grasp", default_value="false", description="also start grasp_target_node"),
        DeclareLaunchArgument(
            "on_demand",
            default_value="false",
            description="proposals only for the frames queries ask about (an idle graph runs no inference)",
        ),
        DeclareLaunchArgument(
            "discovery_server",
            default_value="",
            description="HOST:PORT of a Fast DDS discovery server the nodes discover through (ROS_DISCOVERY_SERVER); "
            "use it with fastdds_profile:=<share>/config/fastdds_multihost.xml",
        ),
        # Camera frames do not fit Fast DDS's default shared-memory segment; the shipped profile has a 32 MB one
        # (single host: UDP on loopback only; use config/fastdds_multihost.xml across machines).
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value=EnvironmentVariable(
                profile_variable, default_value=os.path.join(share, "config", "fastdds.xml")
            ),
            description="Fast DDS XML profile for the nodes",
        ),
    ]
    environment = [
        # FASTDDS_DEFAULT_PROFILES_FILE for Fast DDS 3 (Kilted), FASTRTPS_DEFAULT_PROFILES_FILE for 2 (Jazzy)
        SetEnvironmentVariable(profile_variable, LaunchConfiguration("fastdds_profile")),
        SetEnvironmentVariable("RMW_FASTRTPS_USE_QOS_FROM_XML", "0"),
    ]
    return LaunchDescription([*arguments, *environment, OpaqueFunction(function=_nodes)])
