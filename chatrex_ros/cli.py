"""`chatrex-ros`: the command line for terminals without the ROS 2 CLI.

Each subcommand lives in a module of :mod:`chatrex_ros.commands` exposing ``register(subparsers)``;
modules import their heavy dependencies (rclpy, the models, the bag reader) only when their command runs,
so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import sys

from chatrex_ros.commands import ask, doctor, evaluate, graph, make_bag, replay, upn
from chatrex_ros.commands.exit_codes import ExitCode

COMMAND_MODULES = (graph, ask, evaluate, make_bag, replay, upn, doctor)
"""In the order their commands are listed in ``--help``."""


def build_parser() -> argparse.ArgumentParser:
    """The ``chatrex-ros`` parser with every command module's subcommands registered."""
    parser = argparse.ArgumentParser(prog="chatrex-ros", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named in ``argv`` (default ``sys.argv[1:]``) and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return ExitCode.BAD_INPUT
    return int(args.func(args) or ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
