"""Launch the chatrex graph: proposal_node + language_node (+ grasp_target_node with grasp:=true).

    ros2 launch chatrex_ros chatrex.launch.py image_topic:=/camera/color/image_raw \
        proposal_backend:=onnxruntime language_backend:=chatrex model_path:=/models/ChatRex-7B

Parameters come from config/chatrex.yaml (or params_file:=...); the launch arguments below override the most
common ones. `chatrex-ros up` starts the same graph without the ROS CLI.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("chatrex_ros")
    params_file = LaunchConfiguration("params_file")
    image_topic = LaunchConfiguration("image_topic")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "chatrex.yaml"),
                              description="ROS params file for the nodes"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="camera image topic"),
        DeclareLaunchArgument("depth_topic", default_value="/camera/aligned_depth_to_color/image_raw",
                              description="depth image aligned to the colour camera"),
        DeclareLaunchArgument("depth_info_topic", default_value="/camera/aligned_depth_to_color/camera_info",
                              description="camera_info of the depth image"),
        DeclareLaunchArgument("proposal_backend", default_value="selective_search",
                              description="selective_search | torch | onnxruntime | tensorrt"),
        DeclareLaunchArgument("language_backend", default_value="none", description="none | chatrex"),
        DeclareLaunchArgument("model_path", default_value="", description="local ChatRex-7B directory"),
        DeclareLaunchArgument("grasp", default_value="false", description="also start grasp_target_node"),
        # Camera frames do not fit Fast DDS's default shared-memory segment; the shipped profile has a 32 MB one
        # (single host: UDP on loopback only; use config/fastdds_multihost.xml across machines).
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value=EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                              default_value=os.path.join(share, "config", "fastdds.xml")),
            description="Fast DDS XML profile for the nodes"),
    ]
    environment = [
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        SetEnvironmentVariable("RMW_FASTRTPS_USE_QOS_FROM_XML", "0"),
    ]
    proposal_node = Node(
        package="chatrex_ros", executable="proposal_node", name="proposal_node", namespace="chatrex",
        parameters=[params_file, {"backend": LaunchConfiguration("proposal_backend")}],
        remappings=[("image", image_topic)], output="screen",
    )
    language_node = Node(
        package="chatrex_ros", executable="language_node", name="language_node", namespace="chatrex",
        parameters=[params_file, {"language_backend": LaunchConfiguration("language_backend"),
                                  "model_path": LaunchConfiguration("model_path")}],
        remappings=[("image", image_topic)], output="screen",
    )
    grasp_target_node = Node(
        package="chatrex_ros", executable="grasp_target_node", name="grasp_target_node", namespace="chatrex",
        parameters=[params_file],
        remappings=[("depth", LaunchConfiguration("depth_topic")),
                    ("depth/camera_info", LaunchConfiguration("depth_info_topic"))],
        output="screen", condition=IfCondition(LaunchConfiguration("grasp")),
    )
    return LaunchDescription([*arguments, *environment, proposal_node, language_node, grasp_target_node])
