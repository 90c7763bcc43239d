"""Evaluation outputs: metrics.json, a Markdown report and PNG plots (matplotlib, headless).

The Markdown is built only from the result's JSON form, so a report can be regenerated from a stored
metrics.json. Plots use matplotlib's object API with the Agg canvas: no pyplot global state, no display.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chatrex_ros.eval.result import EvaluationResult

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PLOT_FILES = {"recall": "recall_vs_k.png", "per_class": "per_class_pr.png", "latency": "latency_hist.png"}


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value < 0 else f"{100 * value:.1f}"


def _ms(stats: Mapping[str, Any], key: str) -> str:
    return f"{stats[key]:.1f}" if key in stats else "n/a"


def _rate(entry: Mapping[str, Any], what: str) -> str:
    """'2.50 answers/s (6 answers over 2.00 s)', or why there is no rate."""
    if entry.get("per_s") is None:
        return f"{what}: n/a ({entry.get('count', 0)} with a log time; a rate needs two)"
    return f"{entry['per_s']:.2f} {what}/s ({entry['count']} {what} over {entry['span_s']:.2f} s)"


def render_markdown(report: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    """The report for one metrics.json dict (``EvaluationResult.to_json()``)."""
    inputs, metrics, timing = report["inputs"], report["metrics"], report["timing"]
    lines = ["# chatrex_ros evaluation", ""]
    source = inputs.get("bag") or inputs.get("answers_bag")
    lines += [
        f"* mode: {inputs['mode']}; bag: `{source}`" + (f" ({inputs['storage']})" if inputs.get("storage") else ""),
        f"* ground truth: `{inputs['ground_truth']}`; frames evaluated: {inputs['frames_evaluated']}"
        + (f" of {inputs['frames_in_bag']}" if "frames_in_bag" in inputs else ""),
    ]
    queries_files = [inputs["queries_file"]] if inputs.get("queries_file") else inputs.get("queries_files", [])
    if queries_files:
        lines.append(f"* queries: {', '.join(f'`{path}`' for path in queries_files)} ({inputs.get('queries', 0)})")
    if inputs["mode"] == "offline":
        selection = inputs["selection"]
        lines.append(
            f"* proposals: `{inputs['proposal_backend']}` (score >= {selection['min_score']}, "
            f"NMS {selection['nms_iou']}, top {selection['max_count']}); "
            f"language model: `{inputs['language_backend'] or 'none'}`"
        )
    lines.append("")
    for note in report.get("notes", []):
        lines += [f"> **Note:** {note}", ""]

    proposals = metrics.get("proposals")
    if proposals:
        lines += [
            "## Proposals (class-agnostic)",
            "",
            "| K | recall@K IoU 0.5 | recall@K IoU 0.5:0.95 |",
            "|---|---|---|",
        ]
        for k, values in proposals["recall"].items():
            lines.append(f"| {k} | {_pct(values['iou_0.5'])} | {_pct(values['iou_0.5:0.95'])} |")
        coco = proposals["class_agnostic_coco"]
        lines += [
            "",
            f"Class-agnostic COCO AP {_pct(coco['AP'])} (AP50 {_pct(coco['AP50'])}, AP75 {_pct(coco['AP75'])}) with "
            f"proposal scores as confidences; {proposals['count_mean']:.1f} proposals per frame on average; "
            f"{len(proposals['frames_without_proposals'])} frame(s) without proposals.",
            "",
        ]
    answers = metrics.get("answers")
    if answers and not answers.get("available", True):
        statuses = ", ".join(f"{name} {count}" for name, count in answers["status_counts"].items()) or "none"
        lines += [
            "## Detection and referring",
            "",
            f"Not available: {answers['reason']}. Answers by status: {statuses}.",
            "",
        ]
    elif answers:
        detection = answers["detection"]
        statuses = ", ".join(f"{name} {count}" for name, count in answers["status_counts"].items()) or "none"
        lines += [
            "## Detection (all ground-truth categories of the frame in the prompt)",
            "",
            f"Precision {_pct(detection['precision_iou_0.5'])} / recall {_pct(detection['recall_iou_0.5'])} "
            f"at IoU 0.5 (per class, then averaged); COCO mAP {_pct(detection['coco']['AP'])} "
            f"(AP50 {_pct(detection['coco']['AP50'])}) with proposal scores as confidences. "
            f"{detection['frames_answered']} of {detection['frames']} frames answered.",
            "",
            f"All answers (every kind of query) by status: {statuses}.",
            "",
            "| class | TP | FP | FN | precision | recall |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in detection["per_class"].items():
            lines.append(
                f"| {name} | {c['tp']} | {c['fp']} | {c['fn']} | {_pct(c['precision'])} | {_pct(c['recall'])} |"
            )
        if any(c["precision"] is None or c["recall"] is None for c in detection["per_class"].values()):
            lines += [
                "",
                "n/a precision: the class was never answered (it counts as 0 in the average); n/a recall: the "
                "class has no ground truth (the model named it anyway).",
            ]
        lines += _field_detection_lines(detection)
        referring = answers["referring"]
        lines += ["", "## Referring", ""]
        if referring["queries"]:
            lines.append(
                f"Accuracy (IoU > 0.5, first answered box) {_pct(referring['accuracy_iou_0.5'])}: "
                f"{referring['hits']} of {referring['queries']} queries; "
                f"{referring['unanswered']} unanswered, {referring['empty_answers']} empty."
            )
            if "densityf1_iou_0.5:0.95" in referring:
                lines.append(
                    f"DensityF1 of all answered boxes {_pct(referring['densityf1_iou_0.5'])} at IoU 0.5, "
                    f"{_pct(referring['densityf1_iou_0.5:0.95'])} over 0.5:0.95."
                )
        elif not (referring.get("negatives") or {}).get("queries"):
            lines.append("No referring queries (pass --queries FILE).")
        lines += _rejection_lines(referring.get("negatives"))
        lines += _count_lines(answers.get("count"))
        lines.append("")

    lines += ["## Latency", "", "| stage | count | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---|---|---|---|---|"]
    for stage, stats in timing["stages_ms"].items():
        lines.append(
            f"| {stage} | {stats.get('count', 0)} | {_ms(stats, 'p50')} | {_ms(stats, 'p90')} | "
            f"{_ms(stats, 'p99')} | {_ms(stats, 'mean')} |"
        )
    if timing.get("frames_per_s"):
        lines += [
            "",
            f"Throughput: {timing['frames_per_s']:.2f} frames/s "
            f"({timing['frames']} frames in {timing['wall_s']:.2f} s).",
        ]
    recorded = timing.get("recorded_throughput")
    if recorded:
        lines += [
            "",
            f"Throughput of the recorded pipeline (log time): {_rate(recorded['answers'], 'answers')}; "
            f"{_rate(recorded['proposals'], 'proposal lists')}. Log time is stamp + latency: this is the "
            "pipeline's rate for a live recording or a timed replay, not for a step-mode replay (its "
            "frames wait for each other; see the replay summary's wall time).",
        ]
        if "scoring_s" in timing:
            lines.append(f"Scoring the recording took {timing['scoring_s']:.2f} s (not a pipeline measurement).")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({file})" for name, file in plots.items()]
    return "\n".join(lines) + "\n"


def _field_detection_lines(detection: Mapping[str, Any]) -> list[str]:
    """P/R averaged over IoU 0.5:0.95 and DensityF1, per class (absent from a metrics.json made before them)."""
    if "precision_iou_0.5:0.95" not in detection:
        return []
    lines = [
        "",
        f"Averaged over IoU 0.5:0.95: precision {_pct(detection['precision_iou_0.5:0.95'])} / recall "
        f"{_pct(detection['recall_iou_0.5:0.95'])}. DensityF1 (HumanRef: F1 times min(1, targets / boxes), "
        f"per frame and class, then averaged) {_pct(detection['densityf1_iou_0.5'])} at IoU 0.5, "
        f"{_pct(detection['densityf1_iou_0.5:0.95'])} over 0.5:0.95.",
        "",
        "| class | precision 0.5:0.95 | recall 0.5:0.95 | frames | DensityF1 0.5 | DensityF1 0.5:0.95 |",
        "|---|---|---|---|---|---|",
    ]
    density = detection["per_class_densityf1"]
    for name, values in detection["per_class_iou_0.5:0.95"].items():
        d = density.get(name, {})
        lines.append(
            f"| {name} | {_pct(values['precision'])} | {_pct(values['recall'])} | {d.get('frames', 0)} | "
            f"{_pct(d.get('densityf1_iou_0.5'))} | {_pct(d.get('densityf1_iou_0.5:0.95'))} |"
        )
    return lines


def _rejection_lines(negatives: Mapping[str, Any] | None) -> list[str]:
    """The negative queries' line, when the queries file had any."""
    if not negatives or not negatives["queries"]:
        return []
    fp = negatives["false_positives_per_query"]
    return [
        "",
        f"Negative queries (nothing in the image matches): rejection accuracy {_pct(negatives['rejection_accuracy'])}"
        f" ({negatives['correct_rejections']} of {negatives['queries']} answered with no box; "
        f"{negatives['unanswered']} unanswered count as not rejected); "
        f"{'n/a' if fp is None else f'{fp:.2f}'} false-positive boxes per answered negative query.",
    ]


def _count_lines(count: Mapping[str, Any] | None) -> list[str]:
    """The count section, when count queries were asked."""
    if not count:
        return []
    mae = count["mean_absolute_error"]
    lines = [
        "",
        "## Counting",
        "",
        f"Count accuracy {_pct(count['accuracy'])} ({count['exact']} of {count['queries']} count queries "
        f"grounded exactly as many boxes as there are instances; {count['unanswered']} unanswered count as "
        f"wrong); mean absolute error {'n/a' if mae is None else f'{mae:.2f}'} over the answered ones.",
        "",
        "| class | queries | exact | accuracy | mean abs. error |",
        "|---|---|---|---|---|",
    ]
    for name, c in count["per_class"].items():
        error = "n/a" if c["mean_absolute_error"] is None else f"{c['mean_absolute_error']:.2f}"
        lines.append(f"| {name} | {c['queries']} | {c['exact']} | {_pct(c['accuracy'])} | {error} |")
    return lines


def write_outputs(result: EvaluationResult, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write metrics.json, report.md and (``plots``) the PNGs into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = result.to_json()
    written: dict[str, Path] = {"metrics": out / METRICS_FILE}
    written["metrics"].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    plot_files: dict[str, str] = {}
    if plots:
        for name, path in write_plots(result, out).items():
            written[name] = path
            plot_files[name] = path.name
    written["report"] = out / REPORT_FILE
    written["report"].write_text(render_markdown(report, plot_files), encoding="utf-8")
    return written


def _figure(width: float = 6.4, height: float = 4.0) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "the evaluation plots need matplotlib: pip install matplotlib (or pass --no-plots)"
        ) from error
    figure = Figure(figsize=(width, height), dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    return figure


def write_plots(result: EvaluationResult, out: Path) -> dict[str, Path]:
    """Recall vs K, per-class bars (P/R with a language model, proposal recall without), latency histogram."""
    written: dict[str, Path] = {}
    proposals = result.metrics.get("proposals")
    if proposals:
        figure = _figure()
        axes = figure.add_subplot()
        curve = proposals["recall_curve"]
        for key, label in (("iou_0.5", "IoU 0.5"), ("iou_0.5:0.95", "IoU 0.5:0.95 (mean)")):
            axes.plot(curve["k"], [v if v is not None else float("nan") for v in curve[key]], marker="o", label=label)
        axes.set_xscale("log")
        axes.set_xlabel("K (top proposals)")
        axes.set_ylabel("recall")
        axes.set_ylim(0, 1)
        axes.set_title(f"Proposal recall vs K ({result.inputs.get('proposal_backend', 'recorded')})")
        axes.grid(True, alpha=0.3)
        axes.legend()
        written["recall"] = out / PLOT_FILES["recall"]
        figure.savefig(written["recall"])

    per_class = _per_class_series(result.metrics)
    if per_class:
        written["per_class"] = out / PLOT_FILES["per_class"]
        per_class_figure(*per_class).savefig(written["per_class"])

    samples = {stage: values for stage, values in result.stage_ms.items() if values and stage not in ("frame",)}
    if samples:
        figure = _figure()
        axes = figure.add_subplot()
        # Stages differ by orders of magnitude (decode ~1 ms, a model ~1 s): shared log-spaced bins.
        positive = [v for values in samples.values() for v in values if v > 0]
        low, high = (min(positive), max(positive)) if positive else (1e-3, 1.0)
        bins = np.logspace(np.log10(low) - 0.05, np.log10(high) + 0.05, 40)
        for stage, values in samples.items():
            axes.hist(np.clip(values, low, None), bins=bins, alpha=0.6, label=stage)
        axes.set_xscale("log")
        axes.set_xlabel("milliseconds (log scale)")
        axes.set_ylabel("frames")
        axes.set_title("Latency per stage")
        axes.legend()
        written["latency"] = out / PLOT_FILES["latency"]
        figure.savefig(written["latency"])
    return written


ZERO_LABEL, UNMEASURED_LABEL = "0", "n/a"


def per_class_figure(names: list[str], series: Mapping[str, list[float | None]], title: str) -> Any:
    """Grouped bars per class; a value of 0 and a value not measured (None) each stay visible and distinct.

    A bar of height 0 draws nothing, so a class with recall 0 would look like a class never measured:
    a 0 gets a marker on the baseline in its series' colour and a "0" label, None only an "n/a" label.
    """
    figure = _figure(max(6.4, 0.5 * len(names) + 2))
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    for offset, (label, values) in enumerate(series.items()):
        positions = [i + (offset - (len(series) - 1) / 2) * width for i in range(len(names))]
        bars = axes.bar(positions, [v if v is not None else 0.0 for v in values], width=width, label=label)
        colour = bars.patches[0].get_facecolor() if bars.patches else None
        zeros = [x for x, v in zip(positions, values, strict=True) if v is not None and v == 0]
        if zeros:
            axes.plot(
                zeros,
                [0.0] * len(zeros),
                linestyle="none",
                marker="D",
                markersize=5,
                color=colour,
                clip_on=False,
                zorder=3,
            )
        for x, value in zip(positions, values, strict=True):
            if value is None or value == 0:
                axes.text(
                    x,
                    0.02,
                    UNMEASURED_LABEL if value is None else ZERO_LABEL,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="dimgray" if value is None else colour,
                )
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_ylim(0, 1)
    axes.set_title(title, wrap=True)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # beside the bars, never over them
    return figure


def _per_class_series(metrics: Mapping[str, Any]) -> tuple[list[str], dict[str, list[float | None]], str] | None:
    answers = metrics.get("answers")
    if answers and answers.get("detection") and answers["detection"]["per_class"]:
        per_class = answers["detection"]["per_class"]
        names = list(per_class)
        return (
            names,
            {
                "precision": [per_class[n]["precision"] for n in names],
                "recall": [per_class[n]["recall"] for n in names],
            },
            "Detection precision / recall per class (IoU 0.5)",
        )
    proposals = metrics.get("proposals")
    if proposals and proposals["recall_at_100_per_class_iou_0.5"]:
        per_class = proposals["recall_at_100_per_class_iou_0.5"]
        names = list(per_class)
        return (
            names,
            {"proposal recall@100": [per_class[n] for n in names]},
            "Proposal recall@100 per class, IoU 0.5\n(no language model answers: no P/R)",
        )
    return None
