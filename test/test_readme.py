"""The README documents what the code does: parameter tables, the CI commands and the CLI commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chatrex_ros.cli import build_parser
from chatrex_ros.parameters import markdown_table
from chatrex_ros.ros import grasp_target_node, language_node, proposal_node

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "node", [proposal_node, language_node, grasp_target_node], ids=lambda m: m.__name__.split(".")[-1]
)
def test_parameter_tables_match_the_declared_parameters(node) -> None:
    name = node.__name__.split(".")[-1]
    match = re.search(rf"<!-- parameters:{name} -->\n(.*?)\n<!-- /parameters -->", README, re.S)
    assert match, f"README has no parameter table for {name}"
    assert match.group(1).strip() == markdown_table(node.PARAMETERS)


def test_ci_runs_exactly_the_readme_install_and_test_commands() -> None:
    setup = re.search(r"## Set-up.*?```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in setup.splitlines() if line and not line.startswith("#")]
    install, test, main_job = commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)
    assert main_job.split()[:2] == ["chatrex-ros", "demo"]
    assert "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST" in "\n".join(ci)


def test_every_cli_command_in_the_readme_exists() -> None:
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # argparse keeps them here
    used = set(re.findall(r"chatrex-ros ([a-z][a-z-]+)", README))
    assert used <= commands, used - commands
