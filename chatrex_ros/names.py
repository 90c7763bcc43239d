"""Names of the chatrex graph that ROS-free code needs (the launcher, the offline tools, the CLI defaults)."""

from __future__ import annotations

NAMESPACE = "chatrex"
"""The namespace `chatrex-ros up` and launch/chatrex.launch.py start the nodes in: ``/chatrex/<node>``, and their
topics are ``/chatrex/<topic>``."""

GRAPH_NAMESPACE = f"/{NAMESPACE}"
""":data:`NAMESPACE` as an absolute name (what ``--namespace`` options take)."""

GROUND_TRUTH_TOPIC = f"{GRAPH_NAMESPACE}/ground_truth"
"""Where a bag carries its annotations as Answer messages (`chatrex-ros make-sample --with-gt-topic`)."""
