"""The documentation (README.md and docs/*.md) documents what the code does: parameter tables, the CI commands,
the CLI commands, and links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chatrex_ros.cli import build_parser
from chatrex_ros.node_parameters import NODE_TABLES
from chatrex_ros.parameters import markdown_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def documentation() -> dict[str, str]:
    """README.md and every docs/*.md, by path relative to the repository root."""
    pages = {"README.md": README}
    pages.update({f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))})
    return pages


DOCS = documentation()


def test_the_documentation_is_the_readme_and_the_docs_pages() -> None:
    assert len(DOCS) > 1, "no docs/*.md found"
    for page in DOCS:
        if page != "README.md":
            assert f"({page})" in README, f"the README's table of contents does not link {page}"


@pytest.mark.parametrize("name", sorted(NODE_TABLES))
def test_parameter_tables_match_the_declared_parameters(name) -> None:
    pattern = rf"<!-- parameters:{name} -->\n(.*?)\n<!-- /parameters -->"
    tables = [(page, m) for page, text in DOCS.items() for m in re.finditer(pattern, text, re.S)]
    assert tables, f"the documentation has no parameter table for {name}"
    assert len(tables) == 1, f"{name}'s parameter table is in more than one place: {[p for p, _ in tables]}"
    assert tables[0][1].group(1).strip() == markdown_table(NODE_TABLES[name])


def test_ci_runs_exactly_the_readme_install_and_test_commands() -> None:
    setup = re.search(r"## Set-up.*?```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in setup.splitlines() if line and not line.startswith("#")]
    install, test, main_job = commands
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)
    # once per supported distribution, which ROS_DISTRO selects
    from build_tools.ros_distros import DISTROS

    assert f"for distro in {' '.join(DISTROS)}; do" in ci and "export ROS_DISTRO=$distro" in ci
    assert main_job.split()[:2] == ["chatrex-ros", "demo"]
    assert "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST" in "\n".join(ci)


@pytest.mark.parametrize("page", sorted(DOCS))
def test_every_cli_command_in_the_documentation_exists(page: str) -> None:
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # argparse keeps them here
    used = set(re.findall(r"chatrex-ros ([a-z][a-z-]+)", DOCS[page]))
    assert used <= commands, used - commands


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (headings outside code)."""
    anchors, in_code = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#+ (.*)", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", sorted(DOCS))
def test_every_relative_link_leads_to_a_file_and_heading(page: str) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", DOCS[page]):
        if re.match(r"[a-z]+:", target):
            continue  # an external address
        path, _, anchor = target.partition("#")
        resolved = ((ROOT / page).parent / path).resolve() if path else (ROOT / page).resolve()
        assert resolved.is_file(), f"{page}: link {target!r} leads to no file"
        if anchor:
            text = resolved.read_text()
            assert anchor in _anchors(text), f"{page}: link {target!r}: no heading with that anchor"
