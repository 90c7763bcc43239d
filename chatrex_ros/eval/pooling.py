"""Many bags, one set of metrics: every bag's records scored together, plus a section per bag.

Pooled, not averaged: recall over 4 objects of which 1 was found is 0.25 whether the objects sit in
one bag or in two; the mean of the per-bag recalls (1.0 and 0.0) would say 0.5. So the records of all
bags go through the ordinary scoring (:mod:`chatrex_ros.eval.scoring`) against one ground truth merged
from the bags' own: image, annotation and query ids are renumbered so that bags cannot collide, and the
records are re-stamped onto the merged frames (bags may well share stamps, e.g. copies of a recording).

Everything here is a pure function of the bags' outcomes taken in the fixed bag order, which is what
makes a parallel run's metrics identical to a serial run's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from chatrex_ros.eval.bags import BagJob
from chatrex_ros.eval.groundtruth import GroundTruth, GroundTruthImage, GroundTruthObject, ReferringQuery
from chatrex_ros.eval.records import (
    COUNT_QUERY_PREFIX,
    DETECTION_QUERY_PREFIX,
    REFERRING_QUERY_PREFIX,
    AnswerRecord,
    ProposalRecord,
)
from chatrex_ros.eval.result import EvaluationResult
from chatrex_ros.eval.scoring import no_language_model_entry, score_answers, score_proposals, timing_summary


@dataclass
class BagOutcome:
    """What one bag's evaluation sends back: its result (records, timings) and ground truth, or why it failed."""

    job: BagJob
    result: EvaluationResult | None = None
    gt: GroundTruth | None = None
    queries: tuple[ReferringQuery, ...] = ()
    image_ids: tuple[int, ...] = ()  # the evaluated frames, in stamp order
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the bag was evaluated."""
        return self.result is not None and not self.error


def failed(job: BagJob, error: BaseException | str) -> BagOutcome:
    """The outcome of a bag whose evaluation raised: ``Type: message`` says which error and why."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return BagOutcome(job, error=text)


def evaluated_image_ids(result: EvaluationResult, gt: GroundTruth) -> tuple[int, ...]:
    """The offline run makes one proposal record per evaluated frame, stamped with its ground-truth stamp."""
    ids = {image.id for record in result.proposals if (image := gt.image_at(record.stamp_ns)) is not None}
    return tuple(sorted(ids, key=lambda image_id: gt.image(image_id).stamp_ns))


@dataclass
class MergedRecords:
    """The bags' ground truth and records renumbered into one evaluation."""

    gt: GroundTruth
    queries: list[ReferringQuery] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    proposals: list[ProposalRecord] = field(default_factory=list)
    answers: list[AnswerRecord] = field(default_factory=list)
    origin: dict[int, tuple[str, int]] = field(default_factory=dict)  # merged image id -> (bag label, its id)


def merge(outcomes: Sequence[BagOutcome]) -> MergedRecords:
    """One ground truth and one record list from the evaluated bags, in the order given.

    Merged image ids (and stamps, which only need to be unique) are 1, 2, ... over the bags in order and
    each bag's frames in stamp order; annotation ids likewise; query ids become ``<bag label>/<id>``.
    """
    images: list[GroundTruthImage] = []
    objects: list[GroundTruthObject] = []
    queries: list[ReferringQuery] = []
    image_ids: list[int] = []
    proposals: list[ProposalRecord] = []
    answers: list[AnswerRecord] = []
    origin: dict[int, tuple[str, int]] = {}
    for outcome in outcomes:
        if not outcome.ok or outcome.gt is None or outcome.result is None:
            continue
        gt, label = outcome.gt, outcome.job.label
        image_map: dict[int, int] = {}
        stamp_map: dict[int, int] = {}
        object_map: dict[int, int] = {}
        for image in gt.images:
            new_id = len(images) + 1
            image_map[image.id], stamp_map[image.stamp_ns] = new_id, new_id
            origin[new_id] = (label, image.id)
            images.append(GroundTruthImage(new_id, new_id, image.width, image.height, image.file_name))
        for image in gt.images:
            for obj in gt.objects(image.id):
                object_map[obj.id] = len(objects) + 1
                objects.append(GroundTruthObject(len(objects) + 1, image_map[image.id], obj.category, obj.box))
        queries.extend(  # negative queries (no annotation) stay negative
            replace(
                q,
                id=f"{label}/{q.id}",
                image_id=image_map[q.image_id],
                annotation_id=None if q.annotation_id is None else object_map[q.annotation_id],
            )
            for q in outcome.queries
        )
        image_ids.extend(image_map[i] for i in outcome.image_ids)
        proposals.extend(replace(p, stamp_ns=stamp_map.get(p.stamp_ns, -1)) for p in outcome.result.proposals)
        answers.extend(
            replace(a, stamp_ns=stamp_map.get(a.stamp_ns, -1), query_id=_query_id(a.query_id, label, image_map))
            for a in outcome.result.answers
        )
    if not images:
        raise ValueError("no evaluated bag to merge")
    merged_gt = GroundTruth(images, objects, f"{sum(o.ok for o in outcomes)} bags' ground truth, merged")
    return MergedRecords(merged_gt, queries, image_ids, proposals, answers, origin)


def _query_id(query_id: str, label: str, image_map: Mapping[int, int]) -> str:
    """The merged id of a record's query: per-frame ids follow the renumbered frame, the rest get the label.

    ``eval-detect/<image id>`` and ``eval-count/<image id>/<category>`` name a frame; ``eval-refer/<id>``
    names a query, which the merge renames ``<label>/<id>``.
    """
    for prefix in (DETECTION_QUERY_PREFIX, COUNT_QUERY_PREFIX):
        if query_id.startswith(prefix):
            old, sep, rest = query_id[len(prefix) :].partition("/")
            if old.isdigit() and int(old) in image_map:
                return f"{prefix}{image_map[int(old)]}{sep}{rest}"
    if query_id.startswith(REFERRING_QUERY_PREFIX):
        return f"{REFERRING_QUERY_PREFIX}{label}/{query_id[len(REFERRING_QUERY_PREFIX) :]}"
    return f"{label}/{query_id}"


def pooled_metrics(merged: MergedRecords, with_answers: bool) -> dict[str, Any]:
    """The scoring of :func:`chatrex_ros.eval.offline.evaluate_bag` over the merged records.

    Frame ids in the result are given back as ``<bag label>/<image id>`` (the merged numbers mean nothing
    outside this run).
    """
    metrics: dict[str, Any] = {"proposals": score_proposals(merged.proposals, merged.gt, merged.image_ids)}
    dropped = metrics["proposals"]["frames_without_proposals"]
    metrics["proposals"]["frames_without_proposals"] = [f"{merged.origin[i][0]}/{merged.origin[i][1]}" for i in dropped]
    metrics["answers"] = (
        score_answers(merged.answers, merged.gt, merged.queries, merged.image_ids)
        if with_answers
        else no_language_model_entry()
    )
    return metrics


def bag_section(outcome: BagOutcome) -> dict[str, Any]:
    """A bag's entry in the pooled metrics.json: its own inputs, metrics, notes and timing, or its error."""
    entry: dict[str, Any] = {"label": outcome.job.label, "bag": outcome.job.bag}
    if not outcome.ok or outcome.result is None:
        return {**entry, "status": "failed", "error": outcome.error}
    own = outcome.result.to_json()
    return {**entry, "status": "ok", **{key: own[key] for key in ("inputs", "metrics", "notes", "timing")}}


def _answered(outcome: BagOutcome) -> bool:
    """Whether the bag's run had a language model (its answers entry is a scoring, not a reason)."""
    entry = outcome.result.metrics.get("answers") if outcome.result is not None else None
    return entry is not None and entry.get("available", True)


def bag_notes(done: Sequence[BagOutcome]) -> list[str]:
    """The bags' notes, each once: prefixed by the bags it concerns, bare when it concerns every bag."""
    bags_by_note: dict[str, list[str]] = {}
    for outcome in done:
        for note in outcome.result.notes if outcome.result is not None else ():
            bags_by_note.setdefault(note, []).append(outcome.job.label)
    return [
        note if len(labels) == len(done) > 1 else f"{', '.join(labels)}: {note}"
        for note, labels in bags_by_note.items()
    ]


def pool(outcomes: Sequence[BagOutcome], wall_s: float, executor: Mapping[str, Any]) -> EvaluationResult:
    """The pooled result of many bags' outcomes (in the fixed bag order), with a section per bag.

    ``wall_s`` (the whole run) and ``executor`` (how it ran) go into ``timing``: they differ between a
    serial and a parallel run of the same bags, which must agree on everything else.
    """
    outcomes = sorted(outcomes, key=lambda o: o.job.index)
    done = [o for o in outcomes if o.ok and o.result is not None]
    notes = []
    if len(done) < len(outcomes):
        failures = "; ".join(f"{o.job.label}: {o.error}" for o in outcomes if not o.ok)
        notes.append(f"{len(outcomes) - len(done)} of {len(outcomes)} bag(s) failed and are not scored: {failures}")
    scoring_started = time.perf_counter()
    metrics: dict[str, Any] = {}
    stage_ms: dict[str, list[float]] = {}
    first = done[0].result if done else None
    if done:
        merged = merge(done)
        metrics = pooled_metrics(merged, with_answers=any(_answered(o) for o in done))
        for outcome in done:
            assert outcome.result is not None
            for stage, samples in outcome.result.stage_ms.items():
                stage_ms.setdefault(stage, []).extend(samples)
        notes.extend(bag_notes(done))
    metrics_ms = (time.perf_counter() - scoring_started) * 1e3
    frames = sum(len(o.image_ids) for o in done)
    timing = timing_summary(stage_ms, frames, wall_s)
    timing["metrics_ms"] = round(metrics_ms, 3)
    timing["executor"] = dict(executor)
    inputs: dict[str, Any] = {
        "mode": "offline" if first is not None else "offline (no bag evaluated)",
        "bag": f"{len(outcomes)} bags: " + ", ".join(o.job.label for o in outcomes),
        "bags": [o.job.bag for o in outcomes],
        "bags_evaluated": len(done),
        "bags_failed": [o.job.label for o in outcomes if not o.ok],
        "ground_truth": ", ".join(str(o.result.inputs["ground_truth"]) for o in done if o.result) or "none",
        "frames_in_bag": sum(o.result.inputs.get("frames_in_bag", 0) for o in done if o.result),
        "frames_evaluated": frames,
        "queries": sum(len(o.queries) for o in done),
        "queries_files": [
            o.result.inputs["queries_file"] for o in done if o.result and o.result.inputs.get("queries_file")
        ],
    }
    if first is not None:
        storages = sorted({str(o.result.inputs.get("storage")) for o in done if o.result})
        inputs["storage"] = storages[0] if len(storages) == 1 else "mixed"
        for key in ("proposal_backend", "selection", "language_backend"):
            inputs[key] = first.inputs.get(key)
    proposals = [p for o in done if o.result for p in o.result.proposals]
    answers = [a for o in done if o.result for a in o.result.answers]
    result = EvaluationResult(inputs, metrics, timing, notes, proposals, answers, stage_ms)
    result.bags = [bag_section(o) for o in outcomes]
    return result


TIMING_KEYS = ("timing",)
"""What :func:`without_timing` drops, at the top and in every bag's section: everything measured with a clock."""


def without_timing(report: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.json dict without its clock measurements: what a serial and a parallel run must share exactly."""
    kept = {key: value for key, value in report.items() if key not in TIMING_KEYS}
    if "bags" in kept:
        kept["bags"] = [{k: v for k, v in bag.items() if k not in TIMING_KEYS} for bag in kept["bags"]]
    return kept


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _dig(entry: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(entry, Mapping) or key not in entry:
            return None
        entry = entry[key]
    return entry


def bags_markdown(bags: Sequence[Mapping[str, Any]]) -> str:
    """The report's per-bag section (appended below the pooled report): one row per bag, failures named."""
    lines = [
        "",
        "## Per bag",
        "",
        "The metrics above are pooled: every bag's records scored together, not the mean of the rows below.",
        "",
        "| bag | frames | recall@100 IoU 0.5 | class-agnostic AP | detection P | detection R | referring | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for bag in bags:
        if bag["status"] != "ok":
            error = " ".join(str(bag["error"]).split()).replace("|", "\\|")
            lines.append(f"| {bag['label']} | – | – | – | – | – | – | failed: {error} |")
            continue
        metrics = bag["metrics"]
        lines.append(
            f"| {bag['label']} | {bag['inputs']['frames_evaluated']} "
            f"| {_pct(_dig(metrics, 'proposals', 'recall', '100', 'iou_0.5'))} "
            f"| {_pct(_dig(metrics, 'proposals', 'class_agnostic_coco', 'AP'))} "
            f"| {_pct(_dig(metrics, 'answers', 'detection', 'precision_iou_0.5'))} "
            f"| {_pct(_dig(metrics, 'answers', 'detection', 'recall_iou_0.5'))} "
            f"| {_pct(_dig(metrics, 'answers', 'referring', 'accuracy_iou_0.5'))} | ok |"
        )
    lines += ["", "Each bag's own report and metrics.json: `bags/<bag>/`.", ""]
    return "\n".join(lines)
