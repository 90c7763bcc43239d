"""The weight-free proposer's settings: recall vs time per image, and what a second core buys.

Data: the sample bag's photographs (scikit-image's astronaut, coffee, chelsea, rocket, motorcycle_left and camera,
23 hand-drawn boxes: chatrex_ros/data/sample_annotations.json) and a generated set of textured-shape scenes with
exact boxes (``synthetic_scenes``: 640x480, 3-7 rectangles and ellipses in their own colour and texture on a
cluttered background; boxes are the visible parts of the shapes). For every (mode, working size) selective search
runs once per image, timed; the selection grid (minimum box size, candidate cap, NMS IoU) is applied to its
output, and recall@10/30/100 at IoU 0.5 and averaged over 0.5:0.95 is measured as the evaluation does. Prints the
Pareto front (time vs recall@100 at 0.5) and writes bench/results/proposals.json.

    python bench/bench_proposals.py [--synthetic 24] [--repeats 1]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import cv2
import numpy as np
from _common import print_table, write_results

from chatrex_ros.core.proposals import select_proposals
from chatrex_ros.eval.groundtruth import GroundTruth
from chatrex_ros.eval.metrics import proposal_recall
from chatrex_ros.eval.sample import load_sample_image, sample_annotations_path
from chatrex_ros.models.selective_search import SelectiveSearchBackend

MODES_AND_SIZES = [
    ("fast", 320),
    ("fast", 400),
    ("fast", 480),
    ("single", 320),
    ("single", 400),
    ("single", 480),
    ("single", 640),
]
MIN_BOX = (0.0005, 0.002)
CAPS = (900, 2000)
NMS = (0.8, 0.7, 0.6)
KS = (10, 30, 100)


def sample_set() -> list[tuple[np.ndarray, np.ndarray]]:
    gt = GroundTruth.load(sample_annotations_path())
    return [
        (load_sample_image(image), np.asarray(gt.boxes(image.id), np.float64).reshape(-1, 4)) for image in gt.images
    ]


def synthetic_scenes(count: int, seed: int = 7) -> list[tuple[np.ndarray, np.ndarray]]:
    """Textured shapes on clutter with the exact boxes of their visible parts."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(count):
        height, width = 480, 640
        noise = cv2.GaussianBlur(rng.uniform(0, 255, (height // 8, width // 8, 3)).astype(np.float32), (0, 0), 2)
        image = cv2.resize(noise, (width, height)).astype(np.float32)
        image += rng.normal(0, 12, image.shape)
        labels = np.full((height, width), -1, np.int32)
        shapes = int(rng.integers(3, 8))
        for index in range(shapes):
            w, h = int(rng.integers(40, 260)), int(rng.integers(40, 220))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            mask = np.zeros((height, width), np.uint8)
            if rng.random() < 0.5:
                cv2.rectangle(mask, (x, y), (x + w - 1, y + h - 1), 1, -1)
            else:
                cv2.ellipse(mask, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
            colour = rng.uniform(0, 255, 3)
            yy, xx = np.mgrid[0:height, 0:width]
            stripes = 25 * np.sin(xx * rng.uniform(0.05, 0.3) + yy * rng.uniform(0.05, 0.3))[..., None]
            inside = mask.astype(bool)
            image[inside] = colour + stripes[inside] + rng.normal(0, 6, (inside.sum(), 3))
            labels[inside] = index
        boxes = []
        for index in range(shapes):
            rows, cols = np.nonzero(labels == index)
            if rows.size >= 400:  # visible enough to be an object
                boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        scenes.append((np.clip(image, 0, 255).astype(np.uint8), np.asarray(boxes, np.float64).reshape(-1, 4)))
    return scenes


def recalls(truths: list[np.ndarray], proposals: list[np.ndarray]) -> dict[str, float]:
    thresholds = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))
    table = proposal_recall(truths, proposals, KS, thresholds)
    out = {}
    for row, k in enumerate(KS):
        out[f"R@{k}"] = float(table[row, 0])
        out[f"AR@{k}"] = float(table[row].mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", type=int, default=24, help="generated scenes (default 24)")
    args = parser.parse_args()
    datasets = {
        "sample photographs": sample_set(),
        f"{args.synthetic} synthetic scenes": synthetic_scenes(args.synthetic),
    }
    rows, results = [], []
    for mode, side in MODES_AND_SIZES:
        backend = SelectiveSearchBackend(long_side=side, mode=mode, min_box_fraction=0.0, max_candidates=100_000)
        raw: dict[str, list] = {}
        times: list[float] = []
        for name, scenes in datasets.items():
            raw[name] = []
            for image, _ in scenes:
                start = time.perf_counter()
                out = backend.propose(image)
                times.append((time.perf_counter() - start) * 1e3)
                raw[name].append((out.boxes, image.shape))
        ms = statistics.median(times)
        for min_box, cap, nms in itertools.product(MIN_BOX, CAPS, NMS):
            entry = {
                "mode": mode,
                "long_side": side,
                "min_box_fraction": min_box,
                "max_candidates": cap,
                "nms_iou": nms,
                "ms_median": ms,
            }
            for name, scenes in datasets.items():
                proposals = []
                for (boxes, shape), _ in zip(raw[name], scenes, strict=True):
                    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                    kept = boxes[area >= min_box * shape[0] * shape[1]][:cap]
                    scores = 1.0 / (1.0 + 0.01 * np.arange(len(kept)))
                    order = select_proposals(kept, scores, min_score=0.0, nms_iou=nms, max_count=100)
                    proposals.append(kept[order])
                entry[name] = recalls([truth for _, truth in scenes], proposals)
            results.append(entry)
    key = "sample photographs"
    for entry in results:
        rows.append(
            [
                entry["mode"],
                entry["long_side"],
                entry["min_box_fraction"],
                entry["max_candidates"],
                entry["nms_iou"],
                entry["ms_median"],
                entry[key]["R@100"],
                entry[key]["AR@100"],
                next(v for k, v in entry.items() if k.endswith("synthetic scenes"))["R@100"],
            ]
        )
    print_table(["mode", "side", "min box", "cap", "nms", "ms", "R@100 photos", "AR@100 photos", "R@100 synth"], rows)
    front = pareto([(e["ms_median"], e[key]["R@100"], i) for i, e in enumerate(results)])
    print("\nPareto front (time, photos R@100 at IoU 0.5):")
    for ms, recall, index in front:
        e = results[index]
        print(
            f"  {e['mode']}@{e['long_side']} min_box={e['min_box_fraction']} cap={e['max_candidates']} "
            f"nms={e['nms_iou']}: {ms:.0f} ms, R@100 {recall:.3f}"
        )
    path = write_results(
        "proposals", {"datasets": list(datasets), "results": results, "pareto": [results[i] for _, _, i in front]}
    )
    print(f"wrote {path}")


def pareto(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The settings no other beats on both time and recall, fastest first."""
    front = []
    best = -1.0
    for ms, recall, index in sorted(points):
        if recall > best:
            front.append((ms, recall, index))
            best = recall
    return front


if __name__ == "__main__":
    main()
