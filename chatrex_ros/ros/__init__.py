"""The ROS 2 layer: nodes, message conversions, QoS and parameter helpers. The only place rclpy is used."""
