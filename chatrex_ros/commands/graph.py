"""`chatrex-ros up`: start the graph from a params file, forward logs, stop cleanly on Ctrl-C."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="start proposal_node and language_node (no ROS CLI needed)",
                                   description=__doc__)
    parser.add_argument("--config", type=Path, help="ROS params file (default: the package's config/chatrex.yaml)")
    parser.add_argument("--image", default=None, help="camera image topic (default /camera/image_raw)")
    parser.add_argument("--grasp", action="store_true", help="also start grasp_target_node")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                        help="override a parameter, e.g. --set proposal_node.backend=onnxruntime (YAML value)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and parameters, start nothing")
    parser.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    overrides: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot or not node or not param:
            raise ValueError(f"--set {item!r}: expected NODE.PARAM=VALUE")
        overrides.setdefault(node, {})[param] = yaml.safe_load(value) if value else ""
    return overrides


def run(args: argparse.Namespace) -> int:
    from chatrex_ros.launcher import DEFAULT_IMAGE_TOPIC, GraphProcesses, load_config, plan_graph

    try:
        planned = plan_graph(load_config(args.config), parse_overrides(args.set),
                             args.image or DEFAULT_IMAGE_TOPIC, args.grasp)
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"chatrex-ros up: {error}")
        return 2
    if args.dry_run:
        for node in planned:
            print(shlex.join(node.command(Path(f"<{node.spec.name}.yaml>"))))
            print(yaml.safe_dump({node.spec.name: {"ros__parameters": node.parameters}}, sort_keys=True))
        return 0
    graph = GraphProcesses(planned)
    graph.start()
    return graph.wait()
