"""ROS-free core: prompts, answer parsing, index resolution, proposal selection, grasp geometry.

Nothing in here imports rclpy or message types; numpy is the only dependency.
"""
