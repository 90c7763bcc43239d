"""Parameters declared from one table per node: typed, described, range-checked, validated on change.

A node lists its parameters as :class:`ParamSpec` rows; the same rows drive declaration, validation at start
and at runtime, the README table and the launch-file test (every config entry must be a declared parameter
of the right type).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter


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
        return type(self.default).__name__

    def validate(self, value: Any) -> str | None:
        """None when ``value`` is acceptable, else the reason."""
        expected = type(self.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return f"{self.name} must be {self.type_name}, got {type(value).__name__} {value!r}"
        if self.choices and value not in self.choices and not (
            self.allow_plugin and isinstance(value, str) and value.startswith("python:")
        ):
            extra = " or 'python:module:Class'" if self.allow_plugin else ""
            return f"{self.name} must be one of {', '.join(map(str, self.choices))}{extra}; got {value!r}"
        if self.minimum is not None and value < self.minimum:
            return f"{self.name} must be >= {self.minimum}, got {value}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.name} must be <= {self.maximum}, got {value}"
        return None

    def descriptor(self) -> ParameterDescriptor:
        text = self.description + (f" One of: {', '.join(map(str, self.choices))}." if self.choices else "")
        descriptor = ParameterDescriptor(description=text, read_only=self.read_only)
        if isinstance(self.default, float) and self.minimum is not None and self.maximum is not None:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(self.minimum), to_value=float(self.maximum))]
        elif isinstance(self.default, int) and not isinstance(self.default, bool) and self.minimum is not None and self.maximum is not None:
            descriptor.integer_range = [IntegerRange(from_value=int(self.minimum), to_value=int(self.maximum), step=1)]
        return descriptor


def declare_parameters(node: Node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare every parameter and return their values; raise ValueError listing every invalid one."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for spec in specs:
        try:
            value = node.declare_parameter(spec.name, spec.default, spec.descriptor()).value
        except Exception as error:  # rclpy raises on a type or range mismatch from the params file
            errors.append(f"{spec.name}: {error}")
            continue
        if isinstance(spec.default, float) and isinstance(value, int):
            value = float(value)
        problem = spec.validate(value)
        if problem:
            errors.append(problem)
        values[spec.name] = value
    if errors:
        raise ValueError("invalid parameters:\n  " + "\n  ".join(errors))
    return values


def install_validator(
    node: Node, specs: Iterable[ParamSpec], on_change: Callable[[dict[str, Any]], str | None] | None = None
) -> None:
    """Reject invalid runtime changes; ``on_change`` may veto a valid set by returning a reason."""
    by_name = {spec.name: spec for spec in specs}

    def callback(parameters: list[Parameter]) -> SetParametersResult:
        changed: dict[str, Any] = {}
        for parameter in parameters:
            spec = by_name.get(parameter.name)
            if spec is None:
                continue
            problem = spec.validate(parameter.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
            changed[parameter.name] = parameter.value
        if changed and on_change is not None:
            reason = on_change(changed)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(callback)


def markdown_table(specs: Sequence[ParamSpec]) -> str:
    """The README's parameter table for a node (kept in sync by a test)."""
    rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for spec in specs:
        default = f"`{spec.default}`" if spec.default != "" else '`""`'
        rows.append(f"| `{spec.name}` | {spec.type_name} | {default} | {spec.description} |")
    return "\n".join(rows)
