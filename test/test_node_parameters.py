"""Each node's parameter dataclass and its table agree field for field; typed values round-trip (ROS-free)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from chatrex_ros.node_parameters import (
    GRASP_NODE,
    LANGUAGE_NODE,
    PROPOSAL_NODE,
    GraspNodeParams,
    LanguageNodeParams,
    ProposalNodeParams,
    SensorQos,
    flat_values,
    typed,
    with_changes,
)
from chatrex_ros.parameters import resolve

NODES = [
    (PROPOSAL_NODE, ProposalNodeParams),
    (LANGUAGE_NODE, LanguageNodeParams),
    (GRASP_NODE, GraspNodeParams),
]


def _field_types(cls: type, prefix: str = "") -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    out: dict[str, type] = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            out.update(_field_types(hint, f"{prefix}{field.name}."))
        else:
            out[f"{prefix}{field.name}"] = hint
    return out


@pytest.mark.parametrize(("table", "cls"), NODES, ids=lambda x: getattr(x, "__name__", ""))
def test_dataclass_fields_are_the_table_rows(table, cls) -> None:
    types = _field_types(cls)
    assert list(types) == [spec.name for spec in table], "same names, same order"
    for spec in table:
        assert types[spec.name] is type(spec.default), f"{spec.name}: {types[spec.name]} vs {spec.type_name}"


@pytest.mark.parametrize(("table", "cls"), NODES, ids=lambda x: getattr(x, "__name__", ""))
def test_typed_values_round_trip(table, cls) -> None:
    values = resolve(table, {})
    params = typed(cls, values)
    assert flat_values(params) == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.input_silence_s = 1.0


def test_with_changes_updates_nested_and_flat_names() -> None:
    params = typed(LanguageNodeParams, resolve(LANGUAGE_NODE, {}))
    changed = with_changes(params, {"image_qos.depth": 7, "pairing_wait_s": 0.5})
    assert changed.image_qos == SensorQos(reliability="best_effort", depth=7)
    assert changed.pairing_wait_s == 0.5
    assert params.image_qos.depth == 1 and params.pairing_wait_s == 5.0, "the original is unchanged"
