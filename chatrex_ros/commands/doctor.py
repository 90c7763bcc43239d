"""`chatrex-ros doctor`: check this machine against the graph `chatrex-ros up` would start, before deploying.

Reads the same params file and --set overrides as `up`, loads no model and starts nothing. Prints one table
(✔ fine, ! a warning, ✖ a problem with its fix on the next line, – not configured so not checked); exits 1
when anything is ✖. Paste it into a bug report; --json for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from chatrex_ros.commands.exit_codes import ExitCode


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``doctor`` subcommand to the main CLI's subparsers."""
    parser = subparsers.add_parser(
        "doctor",
        help="check this machine against the configured graph (GPU, CUDA, TensorRT, model files), with fixes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="ROS params file, as for `up` (default: config/chatrex.yaml)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="override a parameter, as for `up`"
    )
    parser.add_argument("--multihost", action="store_true", help="check the profile `up --multihost` would use")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`doctor`: resolve the graph's parameters like `up`, run every check, print the table (or JSON)."""
    from chatrex_ros import doctor
    from chatrex_ros.commands.graph import parse_overrides
    from chatrex_ros.launcher import GraphConfigError, dds_environment, load_config, plan_graph

    try:
        planned = plan_graph(load_config(args.config), parse_overrides(args.set))
        environment = dds_environment(multihost=args.multihost)
    except GraphConfigError as error:
        print("chatrex-ros doctor: the configuration is invalid:\n  " + "\n  ".join(error.problems), file=sys.stderr)
        return ExitCode.BAD_INPUT
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"chatrex-ros doctor: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    nodes = {node.spec.name: node.parameters for node in planned}
    setup = doctor.Setup(
        proposal=nodes.get("proposal_node", {}),
        language=nodes.get("language_node", {}),
        up_environment=environment,
        shell_environment=doctor.shell_environment(),
    )
    results = doctor.run_checks(setup)
    if args.json:
        print(json.dumps([check.to_dict() for check in results], indent=2, ensure_ascii=False))
    else:
        print(doctor.format_table(results))
    return ExitCode.FAILED if any(check.status == doctor.FAIL for check in results) else ExitCode.OK
