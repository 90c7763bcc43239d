"""`chatrex-ros`: the command line for terminals without the ROS 2 CLI.

Each subcommand lives in a module of :mod:`chatrex_ros.commands` exposing ``register(subparsers)``;
modules import their heavy dependencies only when their command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("graph", "ask", "evaluate", "replay", "upn")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatrex-ros", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"chatrex_ros.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"chatrex_ros.commands.{name}":
                continue  # a command module that is not part of this install
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
