"""Speed of the protocol core: parse_answer on a 100-group answer, select_proposals on 900 boxes.

Both run on every answer / every frame, so both should stay well under 1 ms. The NMS is measured
side by side with the classic numpy greedy NMS (one vectorised IoU row per kept box, a Python loop
over kept boxes), on the same inputs in the same run, so the ratio does not depend on the machine.

    PYTHONPATH=. python bench/bench_core.py [--repeat 7] [--output bench/results/bench_core.json]

Prints a table and writes JSON. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import timeit
from pathlib import Path

import numpy as np

from chatrex_ros.core.proposals import select_proposals
from chatrex_ros.core.protocol import parse_answer

GOAL_US = 1000.0
NUM_BOXES = 90
"""Proposals the answers are parsed against: indices 90..99 exercise the dropping path."""
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_core.json"


def per_call_us(function, repeat: int, budget_s: float = 0.2) -> tuple[float, float]:
    """(median, best) microseconds per call over ``repeat`` timing runs of ~budget_s each."""
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    number = max(1, int(number * budget_s / 0.2))
    runs = [t / number * 1e6 for t in timer.repeat(repeat=repeat, number=number)]
    return statistics.median(runs), min(runs)


# --- inputs ----------------------------------------------------------------------------------------
def detection_answer(groups: int) -> str:
    """A detection-style answer: groups back to back, 1-3 indices each (some beyond NUM_BOXES)."""
    rng = np.random.default_rng(0)
    parts = []
    for g in range(groups):
        indices = rng.integers(0, 100, rng.integers(1, 4))
        objects = "".join(f"<obj{k}>" for k in indices)
        parts.append(f"<ground>object category {g}</ground><objects>{objects}</objects>")
    return "".join(parts)


def caption_answer(groups: int) -> str:
    """A grounded caption: groups interleaved with prose, spaced variant, a few bare mentions."""
    parts = []
    for g in range(groups):
        mention = f" near <obj{g % 100}>" if g % 10 == 0 else ""
        parts.append(
            f"Then there is <ground> the thing number {g} </ground> <objects> <obj{g % 100}> </objects>{mention},"
        )
    return " ".join(parts)


def upn_like_boxes(n: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random boxes in a ``spread``-pixel square; smaller spread = more overlap = more suppression."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, spread, (n, 2))
    sizes = rng.uniform(10, 300, (n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    return boxes, rng.uniform(0, 1, n).astype(np.float32)


# --- the baseline ----------------------------------------------------------------------------------
def classic_numpy_nms(boxes: np.ndarray, scores: np.ndarray, min_score: float, nms_iou: float, max_count: int):
    """The textbook numpy NMS: pop the best, compute its IoU with all the rest, drop overlaps."""
    boxes = boxes.astype(np.float64)
    scores = scores.astype(np.float64)
    candidates = np.flatnonzero(np.isfinite(scores) & np.isfinite(boxes).all(1) & (scores >= min_score))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    kept = []
    while order.size and len(kept) < max_count:
        best, rest = order[0], order[1:]
        kept.append(best)
        width = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0)
        height = np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0)
        intersection = width * height
        union = areas[best] + areas[rest] - intersection
        iou = np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)
        order = rest[iou <= nms_iou]
    return np.array(kept, dtype=np.int64)


# --- run -------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timing runs per case (median reported)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON result path")
    args = parser.parse_args()

    rows = []
    for name, text in (("detection, compact", detection_answer(100)), ("caption, spaced", caption_answer(100))):
        if len(parse_answer(text, NUM_BOXES).groups) != 100:
            raise SystemExit(f"the {name} benchmark answer must parse into 100 groups")
        median, best = per_call_us(lambda text=text: parse_answer(text, NUM_BOXES), args.repeat)
        rows.append(
            {
                "case": f"parse_answer, 100 groups, {name}",
                "chars": len(text),
                "median_us": median,
                "best_us": best,
                "baseline_us": None,
                "speedup": None,
                "kept": None,
            }
        )

    for spread, nms_iou, label in (
        (1000, 0.8, "sparse (UPN defaults)"),
        (100, 0.8, "crowded"),
        (100, 0.5, "crowded, NMS 0.5"),
        (10, 0.5, "concentric, NMS 0.5"),
    ):
        boxes, scores = upn_like_boxes(900, spread, seed=spread)
        ours = select_proposals(boxes, scores, 0.3, nms_iou, 100)
        reference = classic_numpy_nms(boxes, scores, 0.3, nms_iou, 100)
        if not np.array_equal(ours, reference):
            raise SystemExit(f"select_proposals and the classic NMS disagree on {label}")
        median, best = per_call_us(
            lambda b=boxes, s=scores, t=nms_iou: select_proposals(b, s, 0.3, t, 100), args.repeat
        )
        base_median, _ = per_call_us(
            lambda b=boxes, s=scores, t=nms_iou: classic_numpy_nms(b, s, 0.3, t, 100), args.repeat
        )
        rows.append(
            {
                "case": f"select_proposals, 900 boxes, {label}",
                "chars": None,
                "median_us": median,
                "best_us": best,
                "baseline_us": base_median,
                "speedup": base_median / median,
                "kept": int(ours.size),
            }
        )

    header = f"{'case':<52} {'median µs':>10} {'best µs':>9} {'classic µs':>11} {'speedup':>8} {'< 1 ms':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        baseline = f"{row['baseline_us']:.0f}" if row["baseline_us"] is not None else "-"
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-"
        goal = "yes" if row["median_us"] < GOAL_US else "NO"
        print(
            f"{row['case']:<52} {row['median_us']:>10.0f} {row['best_us']:>9.0f} {baseline:>11} {speedup:>8} {goal:>7}"
        )

    result = {
        "benchmark": "bench_core",
        "goal_us": GOAL_US,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "baseline": "classic numpy greedy NMS (Python loop over kept boxes), same inputs, same run",
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
