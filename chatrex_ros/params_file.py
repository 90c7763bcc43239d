"""ROS 2 params files read the way rcl reads them, without ROS: which sections apply to which node.

`chatrex-ros up` validates a params file before it starts anything, and `chatrex-ros eval/demo --config` read
the same file as the robot; both must pick exactly the sections that rcl would give a node, or a value that looks
configured is silently not used (a key ``proposal_node`` does not apply to ``/chatrex/proposal_node``).

The rules, as rcl/rclpy apply them (checked against rclpy, see test/test_launch.py):

* A section is a mapping holding ``ros__parameters``; the keys above it, joined with ``/``, are the node name
  pattern (``chatrex: {proposal_node: {ros__parameters: ...}}`` is ``chatrex/proposal_node``).
* A pattern without a leading ``/`` is read from the root: ``chatrex/proposal_node`` is
  ``/chatrex/proposal_node``, and a bare ``proposal_node`` is ``/proposal_node`` only.
* ``*`` matches exactly one name token, ``**`` zero or more (``/**`` is every node, ``/**/proposal_node`` is a
  ``proposal_node`` in any namespace, the root included).
* Several sections may match one node: they apply in file order, a later value of a parameter wins. A pattern
  written twice keeps the place of its first appearance (its values merged), as rcl stores it once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatrex_ros.parameters import flatten

ROS_PARAMETERS = "ros__parameters"
_TOKEN = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Section:
    """One node-name pattern of a params file and its parameters, flattened to dotted names.

    Parameters are flattened as ROS names nested ones, so that ``image_qos: {depth: 1}`` and
    ``image_qos.depth: 1`` are one parameter when sections merge.
    """

    pattern: str
    parameters: dict[str, Any] = field(default_factory=dict)
    written: str = ""  # the name as the file spells it, when it was read differently (a bare name, see below)

    @property
    def label(self) -> str:
        """The name to show a user: as written in their file."""
        return self.written or self.pattern


def pattern_tokens(pattern: str) -> list[str]:
    """The name tokens of a pattern; ValueError for names rcl refuses (it would not start the node at all)."""
    tokens = pattern[1:].split("/") if pattern.startswith("/") else pattern.split("/")
    for token in tokens:
        if not token:
            raise ValueError(f"node name {pattern!r}: empty name token")
        if token not in ("*", "**") and not _TOKEN.fullmatch(token):
            raise ValueError(f"node name {pattern!r}: {token!r} is not a name (letters, digits, '_'), '*' or '**'")
    return tokens


def sections(document: Any, source: str = "params file") -> list[Section]:
    """The sections of a parsed params file, in the order rcl applies them; ValueError on a malformed file."""
    if document is None:
        return []
    if not isinstance(document, Mapping):
        raise ValueError(f"{source}: expected a mapping of node names to {{{ROS_PARAMETERS}: ...}}")
    found: dict[str, dict[str, Any]] = {}  # insertion order = first appearance, as rcl keeps a name once

    def walk(mapping: Mapping[str, Any], names: list[str]) -> None:
        for key, value in mapping.items():
            key = str(key)
            if key == ROS_PARAMETERS:
                if not names:
                    raise ValueError(f"{source}: {ROS_PARAMETERS} needs a node name above it")
                if value is not None and not isinstance(value, Mapping):
                    raise ValueError(f"{source}: {'/'.join(names)}: {ROS_PARAMETERS} must be a mapping")
                pattern = "/".join(names)
                pattern_tokens(pattern)
                found.setdefault(pattern, {}).update(flatten(value or {}))
            elif isinstance(value, Mapping):
                walk(value, [*names, key])
            else:
                where = "/".join([*names, key])
                raise ValueError(
                    f"{source}: {where}: expected a node name with {ROS_PARAMETERS} below it, got {value!r}"
                )

    walk(document, [])
    return [Section(pattern, parameters) for pattern, parameters in found.items()]


def load_sections(path: str | Path) -> list[Section]:
    """:func:`sections` of a params file on disk (OSError / ValueError / yaml.YAMLError on failure)."""
    import yaml

    with open(path, encoding="utf-8") as stream:
        return sections(yaml.safe_load(stream), str(path))


def qualified_name(namespace: str, name: str) -> str:
    """``("chatrex", "proposal_node")`` -> ``/chatrex/proposal_node`` (what rcl matches patterns against)."""
    namespace = namespace.strip("/")
    return f"/{namespace}/{name}" if namespace else f"/{name}"


def matches(pattern: str, node: str) -> bool:
    """Whether a section's pattern applies to the fully qualified node name ``node`` (e.g. ``/chatrex/x``)."""
    wanted = pattern_tokens(pattern)
    tokens = node.strip("/").split("/")

    def match(i: int, j: int) -> bool:
        if i == len(wanted):
            return j == len(tokens)
        if wanted[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(tokens) + 1))
        return j < len(tokens) and wanted[i] in ("*", tokens[j]) and match(i + 1, j + 1)

    return match(0, 0)


def node_parameters(found: Iterable[Section], node: str) -> dict[str, Any]:
    """The parameters rcl gives the fully qualified node ``node``: matching sections in order, later wins."""
    values: dict[str, Any] = {}
    for section in found:
        if matches(section.pattern, node):
            values.update(section.parameters)
    return values


def is_bare_name(pattern: str) -> bool:
    """A pattern that is one plain name with no ``/`` and no wildcard, e.g. ``language_node``."""
    return "/" not in pattern and _TOKEN.fullmatch(pattern) is not None


def bare_names_in_namespace(found: Iterable[Section], namespace: str) -> list[Section]:
    """Read bare names (``language_node:``) as that node in ``namespace`` instead of the root namespace.

    Not an rcl rule: it is for files that tools of this package read for a graph that runs in one namespace,
    where rcl's reading (a node in the root namespace, which that graph never has) could only mean a section
    that silently applies to nothing. ``ros2 launch`` keeps rcl's reading, so shared files should say
    ``/**/language_node``.
    """
    return [
        Section(qualified_name(namespace, s.pattern), s.parameters, s.pattern) if is_bare_name(s.pattern) else s
        for s in found
    ]
