"""Offline evaluation: bag reading/writing, metrics, reports, sample data. ROS-free."""
