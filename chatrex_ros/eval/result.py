"""The outcome of one evaluation run, shared by the offline and the recorded-answers paths and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatrex_ros.eval.records import AnswerRecord, ProposalRecord

SCHEMA = "chatrex_ros.eval/1"
"""Version of the metrics.json layout; bump it when a key changes meaning."""


@dataclass
class EvaluationResult:
    """Everything a report needs; ``to_json()`` is the content of metrics.json.

    ``metrics`` depends only on the inputs (same bag, ground truth and backends -> same dict);
    ``timing`` is everything measured with a clock, kept apart so runs can be compared with ``==``.
    """

    inputs: dict[str, Any]
    metrics: dict[str, Any]
    timing: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    proposals: list[ProposalRecord] = field(default_factory=list, repr=False)
    answers: list[AnswerRecord] = field(default_factory=list, repr=False)
    stage_ms: dict[str, list[float]] = field(default_factory=dict, repr=False)  # raw samples, for the plots
    bags: list[dict[str, Any]] = field(default_factory=list)
    """Many bags (:mod:`chatrex_ros.eval.pooling`): each bag's own section, in the fixed bag order; the other
    fields are then the pooled evaluation. Empty for one bag, whose metrics.json keeps its single-bag form."""

    def to_json(self) -> dict[str, Any]:
        """The metrics.json content: schema, inputs, metrics, notes and timing (the raw samples stay out).

        Many bags pooled add ``bags``, a section per bag.
        """
        report: dict[str, Any] = {
            "schema": SCHEMA,
            "inputs": self.inputs,
            "metrics": self.metrics,
            "notes": self.notes,
            "timing": self.timing,
        }
        if self.bags:
            report["bags"] = self.bags
        return report
