"""Parameters declared from one table per node: typed, described, range-checked, validated on change.

A node lists its parameters as :class:`~chatrex_ros.parameters.ParamSpec` rows; the same rows drive
declaration, validation at start and at runtime, the tables in docs/nodes.md, the offline tools' config reading and the
launch-file test (every config entry must be a declared parameter of the right type).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from chatrex_ros.parameters import ParamSpec, resolve


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS descriptor of a row: its description with the choices, read-only flag and numeric range."""
    text = spec.description + (f" One of: {', '.join(map(str, spec.choices))}." if spec.choices else "")
    result = ParameterDescriptor(description=text, read_only=spec.read_only)
    low, high = spec.minimum, spec.maximum
    if low is None or high is None:
        return result
    if isinstance(spec.default, float):
        result.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
    elif isinstance(spec.default, int) and not isinstance(spec.default, bool):
        result.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
    return result


def declare_parameters(node: Node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare every parameter and return their values; raise ValueError listing every invalid one."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for spec in specs:
        try:
            values[spec.name] = node.declare_parameter(spec.name, spec.default, descriptor(spec)).value
        except Exception as error:  # rclpy raises on a type or range mismatch from the params file
            errors.append(f"{spec.name}: {error}")
    if errors:
        raise ValueError("invalid parameters:\n  " + "\n  ".join(errors))
    return resolve(specs, values)


def install_validator(
    node: Node, specs: Iterable[ParamSpec], on_change: Callable[[dict[str, Any]], str | None] | None = None
) -> None:
    """Reject invalid runtime changes; ``on_change`` may veto a valid set by returning a reason."""
    by_name = {spec.name: spec for spec in specs}

    def callback(parameters: list[Parameter[Any]]) -> SetParametersResult:
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
