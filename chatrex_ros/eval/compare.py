"""Evaluation runs side by side: ``chatrex-ros eval --compare RUN_A RUN_B ...``.

Each run is an evaluation output directory (or its metrics.json). The headline metrics go in one table,
rows = metrics and columns = runs, with each run's difference to the first; the per-class metrics in
others where the runs have them; and grouped bar plots. A metric a run does not have (another mode, no
language model, a metrics.json from an older version) is shown as "–", never as 0: a missing number and
a zero mean different things. Only metrics.json is read, so runs from other machines compare as well.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatrex_ros.eval.report import METRICS_FILE

MISSING = "–"
TABLE_FILE = "compare.md"
JSON_FILE = "compare.json"
PLOT_FILES = {"headline": "compare_headline.png", "per_class": "compare_per_class.png"}


@dataclass(frozen=True)
class Headline:
    """One row of the headline table: where its number is in metrics.json and how it is shown.

    ``kind``: ``fraction`` (shown in %, differences in percentage points), ``number``, or ``count`` (an
    int; a list counts its items, e.g. the frames without proposals).
    """

    label: str
    path: tuple[str, ...]
    kind: str = "fraction"


HEADLINES = (
    Headline("proposal recall@10, IoU 0.5", ("metrics", "proposals", "recall", "10", "iou_0.5")),
    Headline("proposal recall@30, IoU 0.5", ("metrics", "proposals", "recall", "30", "iou_0.5")),
    Headline("proposal recall@100, IoU 0.5", ("metrics", "proposals", "recall", "100", "iou_0.5")),
    Headline("proposal recall@100, IoU 0.5:0.95", ("metrics", "proposals", "recall", "100", "iou_0.5:0.95")),
    Headline("class-agnostic AP", ("metrics", "proposals", "class_agnostic_coco", "AP")),
    Headline("class-agnostic AP50", ("metrics", "proposals", "class_agnostic_coco", "AP50")),
    Headline("proposals per frame", ("metrics", "proposals", "count_mean"), "number"),
    Headline("frames without proposals", ("metrics", "proposals", "frames_without_proposals"), "count"),
    Headline("detection precision, IoU 0.5", ("metrics", "answers", "detection", "precision_iou_0.5")),
    Headline("detection recall, IoU 0.5", ("metrics", "answers", "detection", "recall_iou_0.5")),
    Headline("detection mAP", ("metrics", "answers", "detection", "coco", "AP")),
    Headline("detection AP50", ("metrics", "answers", "detection", "coco", "AP50")),
    Headline("referring accuracy, IoU 0.5", ("metrics", "answers", "referring", "accuracy_iou_0.5")),
    Headline("frames evaluated", ("inputs", "frames_evaluated"), "count"),
    Headline("frames/s", ("timing", "frames_per_s"), "number"),
    Headline("frame latency p50 (ms)", ("timing", "stages_ms", "frame", "p50"), "number"),
    Headline("language model p50 (ms)", ("timing", "stages_ms", "language", "p50"), "number"),  # offline runs
    Headline("answer latency p50 (ms)", ("timing", "stages_ms", "answers", "p50"), "number"),  # recorded runs
)
"""The headline rows, in table order; a row no run has is left out."""


def _dig(report: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(report, Mapping) or key not in report:
            return None
        report = report[key]
    return report


def _number(value: Any, kind: str) -> float | None:
    if kind == "count" and isinstance(value, list):
        return float(len(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _detection_per_class(field: str) -> Callable[[Mapping[str, Any]], dict[str, Any] | None]:
    def values(report: Mapping[str, Any]) -> dict[str, Any] | None:
        per_class = _dig(report, ("metrics", "answers", "detection", "per_class"))
        return {name: entry.get(field) for name, entry in per_class.items()} if per_class else None

    return values


def _proposal_recall_per_class(report: Mapping[str, Any]) -> dict[str, Any] | None:
    per_class = _dig(report, ("metrics", "proposals", "recall_at_100_per_class_iou_0.5"))
    return dict(per_class) if per_class else None


PER_CLASS = (
    ("detection recall per class, IoU 0.5", _detection_per_class("recall")),
    ("detection precision per class, IoU 0.5", _detection_per_class("precision")),
    ("proposal recall@100 per class, IoU 0.5", _proposal_recall_per_class),
)
"""The per-class tables (fractions), in order; the first one some run has is also plotted."""


@dataclass
class Table:
    """Rows of values, one column per run (None: not in that run)."""

    title: str
    rows: list[tuple[str, str, list[float | None]]]  # (row label, kind, value per run)


@dataclass
class Comparison:
    """The compared runs (names and paths) and their tables: the headline first, then the per-class ones."""

    names: list[str]
    paths: list[Path]
    headline: Table
    per_class: list[Table]
    ground_truths: list[str]
    """Each run's ground truth as its metrics.json names it: runs scored against different ones are told apart."""


def load_run(path: str | Path) -> dict[str, Any]:
    """A run's metrics.json, from its output directory or the file itself (ValueError naming what is wrong)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist (give the output directory of a chatrex-ros eval run)")
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{path}: no {METRICS_FILE} (give the output directory of a chatrex-ros eval run)")
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(report, dict) or "metrics" not in report:
        raise ValueError(f"{file} is not an evaluation's metrics.json (no 'metrics')")
    return report


def run_names(paths: Sequence[Path]) -> list[str]:
    """The directory names (a metrics.json file: its directory's), numbered where two are the same."""
    names: list[str] = []
    for path in paths:
        base = (path if path.is_dir() else path.parent).resolve().name or str(path)
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def compare_runs(paths: Sequence[str | Path]) -> Comparison:
    """Read two or more runs and build their tables."""
    runs = [Path(p) for p in paths]
    if len(runs) < 2:
        raise ValueError(f"--compare needs at least two runs, got {len(runs)}")
    reports = [load_run(p) for p in runs]
    headline = Table("headline metrics", [])
    for row in HEADLINES:
        values = [_number(_dig(report, row.path), row.kind) for report in reports]
        if any(v is not None for v in values):
            headline.rows.append((row.label, row.kind, values))
    per_class = []
    for title, extract in PER_CLASS:
        by_run = [extract(report) or {} for report in reports]
        classes = sorted({name for values in by_run for name in values})
        if classes:
            rows = [
                (name, "fraction", [_number(values.get(name), "fraction") for values in by_run]) for name in classes
            ]
            per_class.append(Table(title, rows))
    ground_truths = [str(_dig(report, ("inputs", "ground_truth"))) for report in reports]
    return Comparison(run_names(runs), runs, headline, per_class, ground_truths)


def _shown(value: float | None, kind: str) -> str:
    if value is None:
        return MISSING
    if kind == "fraction":
        return f"{100 * value:.1f}"
    return f"{value:.0f}" if kind == "count" else f"{value:.2f}"


def _difference(value: float | None, first: float | None, kind: str) -> str:
    if value is None or first is None:
        return MISSING
    delta = value - first
    if kind == "fraction":
        return f"{100 * delta:+.1f}"
    return f"{delta:+.0f}" if kind == "count" else f"{delta:+.2f}"


def differences(comparison: Comparison, table: Table) -> list[list[float | None]]:
    """Per row, each run's value minus the first run's (None where either is missing; the first run's is 0)."""
    return [[None if v is None or values[0] is None else v - values[0] for v in values] for _, _, values in table.rows]


def table_markdown(comparison: Comparison, table: Table, first_column: str) -> list[str]:
    """One table: a column per run, and after each run but the first its difference to the first."""
    header = [first_column, comparison.names[0]]
    for name in comparison.names[1:]:
        header += [name, f"Δ {name}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, kind, values in table.rows:
        cells = [label, _shown(values[0], kind)]
        for value in values[1:]:
            cells += [_shown(value, kind), _difference(value, values[0], kind)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(comparison: Comparison) -> str:
    """The comparison as Markdown (also what the terminal shows)."""
    lines = ["# chatrex_ros evaluation runs compared", ""]
    for name, path, truth in zip(comparison.names, comparison.paths, comparison.ground_truths, strict=True):
        label = "" if str(path) == name else f"`{name}`: "
        lines.append(f"* {label}`{path}`, ground truth `{truth}`")
    if len(set(comparison.ground_truths)) > 1:
        lines += ["", "> **Note:** the runs were scored against different ground truth: compare them knowingly."]
    lines += [
        "",
        f"Fractions in %, their differences (Δ) vs `{comparison.names[0]}` in percentage points; other rows in "
        f"their own units (counts, frames/s, ms), differences in the same; {MISSING}: not in that run.",
        "",
        "## Headline metrics",
        "",
        *table_markdown(comparison, comparison.headline, "metric"),
    ]
    for table in comparison.per_class:
        lines += ["", f"## {table.title[0].upper()}{table.title[1:]}", "", *table_markdown(comparison, table, "class")]
    return "\n".join(lines) + "\n"


def to_json(comparison: Comparison) -> dict[str, Any]:
    """The comparison's values and differences, for scripts."""

    def table_json(table: Table) -> dict[str, Any]:
        return {
            "title": table.title,
            "rows": [
                {
                    "name": label,
                    "kind": kind,
                    "values": dict(zip(comparison.names, values, strict=True)),
                    "difference_vs_first": dict(zip(comparison.names, delta, strict=True)),
                }
                for (label, kind, values), delta in zip(table.rows, differences(comparison, table), strict=True)
            ],
        }

    return {
        "runs": [
            {"name": n, "path": str(p), "ground_truth": g}
            for n, p, g in zip(comparison.names, comparison.paths, comparison.ground_truths, strict=True)
        ],
        "headline": table_json(comparison.headline),
        "per_class": [table_json(table) for table in comparison.per_class],
    }


def write_comparison(comparison: Comparison, out: str | Path, plots: bool = True) -> dict[str, Path]:
    """compare.md, compare.json and (``plots``) the bar plots into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"table": out / TABLE_FILE, "json": out / JSON_FILE}
    written["table"].write_text(render_markdown(comparison), encoding="utf-8")
    written["json"].write_text(json.dumps(to_json(comparison), indent=2) + "\n", encoding="utf-8")
    if plots:
        written.update(write_plots(comparison, out))
    return written


def write_plots(comparison: Comparison, out: Path) -> dict[str, Path]:
    """Grouped bars, one bar per run: the headline fractions, and the first per-class table."""
    from chatrex_ros.eval.report import per_class_figure

    written: dict[str, Path] = {}
    fractions = [(label, values) for label, kind, values in comparison.headline.rows if kind == "fraction"]
    if fractions:
        series = {name: [values[i] for _, values in fractions] for i, name in enumerate(comparison.names)}
        figure = per_class_figure([label for label, _ in fractions], series, "Headline metrics by run")
        written["headline"] = out / PLOT_FILES["headline"]
        figure.savefig(written["headline"])
    if comparison.per_class:
        table = comparison.per_class[0]
        series = {name: [values[i] for _, _, values in table.rows] for i, name in enumerate(comparison.names)}
        figure = per_class_figure(
            [label for label, _, _ in table.rows], series, f"{table.title[0].upper()}{table.title[1:]}"
        )
        written["per_class"] = out / PLOT_FILES["per_class"]
        figure.savefig(written["per_class"])
    return written
