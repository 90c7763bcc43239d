"""Node parameters as data: typed, described, range-checked.

ROS-free, so the offline tools read the same config file and defaults as the nodes (the ROS layer turns a spec into
a declared parameter).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its type is the type of ``default``."""

    name: str
    default: Any
    description: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    read_only: bool = False
    allow_plugin: bool = False  # a string choice may also be 'python:module:Class'

    @property
    def type_name(self) -> str:
        """The parameter's type as the docs' tables spell it (``int``, ``float``, ``str``, ``bool``)."""
        return type(self.default).__name__

    def validate(self, value: Any) -> str | None:
        """None when ``value`` is acceptable, else the reason."""
        expected = type(self.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return f"{self.name} must be {self.type_name}, got {type(value).__name__} {value!r}"
        if (
            self.choices
            and value not in self.choices
            and not (self.allow_plugin and isinstance(value, str) and value.startswith("python:"))
        ):
            extra = " or 'python:module:Class'" if self.allow_plugin else ""
            return f"{self.name} must be one of {', '.join(map(str, self.choices))}{extra}; got {value!r}"
        if self.minimum is not None and value < self.minimum:
            return f"{self.name} must be >= {self.minimum}, got {value}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.name} must be <= {self.maximum}, got {value}"
        return None


RELIABILITIES = ("best_effort", "reliable")


def sensor_qos_specs(prefix: str = "image_qos", what: str = "Image") -> list[ParamSpec]:
    """Parameters that configure a sensor subscription's QoS (default best-effort KEEP_LAST(1))."""
    return [
        ParamSpec(
            f"{prefix}.reliability", "best_effort", f"{what} subscription reliability.", RELIABILITIES, read_only=True
        ),
        ParamSpec(
            f"{prefix}.depth", 1, f"{what} subscription KEEP_LAST depth.", minimum=1, maximum=100, read_only=True
        ),
    ]


def resolve(specs: Sequence[ParamSpec], values: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``values`` (nested dicts flattened to dotted names); ValueError on any bad one."""
    flat = flatten(values)
    by_name = {spec.name: spec for spec in specs}
    unknown = sorted(set(flat) - set(by_name))
    errors = [f"unknown parameter {name!r}" for name in unknown]
    resolved: dict[str, Any] = {}
    for spec in specs:
        value = flat.get(spec.name, spec.default)
        if isinstance(spec.default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        problem = spec.validate(value)
        if problem:
            errors.append(problem)
        resolved[spec.name] = value
    if errors:
        raise ValueError("invalid parameters:\n  " + "\n  ".join(errors))
    return resolved


def node_section(config_path: str | Path, node: str) -> dict[str, Any]:
    """The parameters a ROS 2 params file gives ``node`` as the robot runs it ({} when no section applies).

    ``node`` is a node of the chatrex graph (``"proposal_node"``, read as ``/chatrex/proposal_node``, the name
    `chatrex-ros up` and the launch file give it) or a fully qualified name. Sections are matched as rcl matches
    them (``/**/proposal_node``, ``/chatrex/*``, ... in file order, later wins; see :mod:`chatrex_ros.params_file`),
    so `chatrex-ros eval/demo --config` read exactly the values the running node gets; a bare ``proposal_node:``
    section is read as the graph's node too, as `chatrex-ros up` reads it. Nested parameters come back with
    dotted names (``image_qos.depth``), which :func:`resolve` takes like nested ones. ROS's built-in
    ``use_sim_time`` (often set for every node with ``/**``) is left out: it is no entry of a node's table, and
    the offline tools have no ROS clock.
    """
    from chatrex_ros.launcher import USE_SIM_TIME
    from chatrex_ros.names import NAMESPACE
    from chatrex_ros.params_file import bare_names_in_namespace, load_sections, node_parameters, qualified_name

    sections = bare_names_in_namespace(load_sections(config_path), NAMESPACE)
    values = node_parameters(sections, node if node.startswith("/") else qualified_name(NAMESPACE, node))
    values.pop(USE_SIM_TIME.name, None)
    return values


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"image_qos": {"depth": 1}}`` -> ``{"image_qos.depth": 1}``, as ROS names nested parameters."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def markdown_table(specs: Sequence[ParamSpec]) -> str:
    """The README's parameter table for a node (kept in sync by a test)."""
    rows = ["| parameter | type | default | allowed | description |", "|---|---|---|---|---|"]
    for spec in specs:
        default = f"`{spec.default}`" if spec.default != "" else '`""`'
        rows.append(f"| `{spec.name}` | {spec.type_name} | {default} | {_allowed(spec)} | {spec.description} |")
    return "\n".join(rows)


def _allowed(spec: ParamSpec) -> str:
    """The values a parameter accepts, as the table shows them; ``(read-only)`` when fixed at start."""
    if spec.choices:
        text = ", ".join(f"`{choice}`" for choice in spec.choices)
        text += ", `python:module:Class`" if spec.allow_plugin else ""
    elif spec.minimum is not None and spec.maximum is not None:
        text = f"{_number(spec.minimum)}..{_number(spec.maximum)}"
    elif spec.minimum is not None:
        text = f">= {_number(spec.minimum)}"
    elif spec.maximum is not None:
        text = f"<= {_number(spec.maximum)}"
    else:
        text = "any"
    return f"{text} (read-only)" if spec.read_only else text


def _number(value: float) -> str:
    """A bound as people write it: 1048576, not 1.04858e+06; 0.05, not 0.050000."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"
