"""`chatrex-ros up`: start the graph from a params file, forward logs, stop cleanly on Ctrl-C, SIGTERM or SIGHUP.

Every value of the params file and of --set is checked against the nodes' parameter tables before anything
starts (exit 2 with the reason); a requested stop exits 0, a node that exits on its own ends the graph with its
exit code.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from chatrex_ros.commands.exit_codes import ExitCode
from chatrex_ros.launcher import (
    DEFAULT_COLOR_INFO_TOPIC,
    DEFAULT_DEPTH_INFO_TOPIC,
    DEFAULT_DEPTH_TOPIC,
    DEFAULT_IMAGE_TOPIC,
    FASTDDS_PROFILE_VARIABLES,
)
from chatrex_ros.names import NAMESPACE


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``up`` subcommand to the main CLI's subparsers."""
    parser = subparsers.add_parser(
        "up",
        help="start proposal_node and language_node (no ROS CLI needed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_graph_options(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the configuration, print the commands and resolved parameters, start nothing",
    )
    parser.set_defaults(func=run)


def add_graph_options(parser: argparse.ArgumentParser) -> None:
    """The options that describe the graph: ``up`` starts it, ``doctor`` checks a machine against it."""
    parser.add_argument(
        "--config",
        type=Path,
        help="ROS params file (default: the package's config/chatrex.yaml); sections as for ros2 "
        "launch, e.g. '/**/language_node:'; a bare 'language_node:' means "
        f"/{NAMESPACE}/language_node",
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE_TOPIC, help="camera image topic (default %(default)s)")
    parser.add_argument("--grasp", action="store_true", help="also start grasp_target_node")
    parser.add_argument(
        "--depth",
        default=DEFAULT_DEPTH_TOPIC,
        metavar="TOPIC",
        help="depth image aligned to the colour image, for --grasp (default %(default)s)",
    )
    parser.add_argument(
        "--depth-info",
        default=DEFAULT_DEPTH_INFO_TOPIC,
        metavar="TOPIC",
        help="camera_info of the depth image, for --grasp (default %(default)s)",
    )
    parser.add_argument(
        "--color-info",
        default=DEFAULT_COLOR_INFO_TOPIC,
        metavar="TOPIC",
        help="camera_info of the colour image, for --grasp (default %(default)s)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="override a parameter, e.g. --set proposal_node.backend=onnxruntime (YAML value)",
    )
    parser.add_argument(
        "--on-demand",
        action="store_true",
        help="proposals only for the frames queries ask about (proposal_node mode:=on_demand, language_node "
        "proposals_on_demand:=true): an idle graph runs no inference",
    )
    parser.add_argument(
        "--multihost",
        action="store_true",
        help="the graph spans machines: Fast DDS on every interface (config/fastdds_multihost.xml), not loopback only",
    )
    parser.add_argument(
        "--discovery-server",
        metavar="HOST:PORT",
        default="",
        help="discover through this Fast DDS discovery server (started with "
        "`fastdds discovery -i 0 -l 0.0.0.0 -p PORT`) instead of multicast; implies --multihost",
    )


ON_DEMAND_SETTINGS = ["proposal_node.mode=on_demand", "language_node.proposals_on_demand=true"]
"""What ``--on-demand`` sets (before the user's ``--set``, which may still override either)."""


def parse_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    """``["proposal_node.min_score=0.5"]`` -> ``{"proposal_node": {"min_score": "0.5"}}``, values still text."""
    overrides: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot or not node or not param:
            raise ValueError(f"--set {item!r}: expected NODE.PARAM=VALUE")
        overrides.setdefault(node, {})[param] = value  # typed by the launcher, which knows each parameter's type
    return overrides


def plan_from_options(args: argparse.Namespace) -> tuple[Any, list[Any], dict[str, str]]:
    """The params file, the planned nodes and their DDS environment, from :func:`add_graph_options`' options.

    Raises GraphConfigError (every problem), OSError/ValueError/yaml.YAMLError (an unreadable file or option).
    """
    from chatrex_ros.launcher import dds_environment, load_config, plan_graph

    topics = {
        "image": args.image,
        "depth": args.depth,
        "depth/camera_info": args.depth_info,
        "color/camera_info": args.color_info,
    }
    on_demand = ON_DEMAND_SETTINGS if args.on_demand else []
    config = load_config(args.config)
    planned = plan_graph(config, parse_overrides([*on_demand, *args.set]), topics, args.grasp)
    return config, planned, dds_environment(multihost=args.multihost, discovery_server=args.discovery_server)


def run(args: argparse.Namespace) -> int:
    """`up`: validate the params file and --set overrides, then run the graph (or print it with --dry-run)."""
    from chatrex_ros.launcher import GraphConfigError, GraphProcesses

    try:
        config, planned, environment = plan_from_options(args)
    except GraphConfigError as error:
        print("chatrex-ros up: nothing started:\n  " + "\n  ".join(error.problems), file=sys.stderr)
        return ExitCode.BAD_INPUT
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"chatrex-ros up: nothing started: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    for name in config.bare_names:
        print(
            f"chatrex-ros up: note: {config.path}: '{name}' is read as /{NAMESPACE}/{name}; `ros2 launch` "
            f"would apply it only to a node in the root namespace: write '/**/{name}' there",
            file=sys.stderr,
        )
    if args.dry_run:
        # Each command as a shell would run it: the DDS settings up gives the nodes, then the node's command line.
        keys = (*FASTDDS_PROFILE_VARIABLES, "ROS_DISCOVERY_SERVER", "ROS_AUTOMATIC_DISCOVERY_RANGE")
        settings = [f"{key}={shlex.quote(environment[key])}" for key in keys if environment.get(key)]
        for node in planned:
            print(" ".join([*settings, shlex.join(node.command(Path(f"<{node.spec.name}.yaml>")))]))
            print(yaml.safe_dump(node.params_document(), sort_keys=False))
        return ExitCode.OK
    return GraphProcesses(planned, environment=environment).run()
