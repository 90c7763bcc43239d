"""`chatrex-ros doctor`: check this machine against the graph `chatrex-ros up` would start, before deploying.

Takes the options of `up` (params file, --set overrides, topics, --grasp, ...), loads no model and starts
nothing. Prints one table (✔ fine, ! a warning, ✖ a problem with its fix on the next line, – not configured so
not checked); exits 1 when anything is ✖. Paste it into a bug report; --json for machines.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from chatrex_ros.commands.exit_codes import ExitCode
from chatrex_ros.commands.graph import add_graph_options


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``doctor`` subcommand to the main CLI's subparsers."""
    parser = subparsers.add_parser(
        "doctor",
        help="check this machine against the configured graph (GPU, CUDA, TensorRT, model files), with fixes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_graph_options(parser)  # the same graph as `up` with the same options would start
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`doctor`: resolve the graph's parameters like `up`, run every check, print the table (or JSON)."""
    from chatrex_ros import doctor
    from chatrex_ros.commands.graph import plan_from_options
    from chatrex_ros.launcher import GraphConfigError

    try:
        _, planned, environment = plan_from_options(args)
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
