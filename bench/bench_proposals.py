"""The weight-free proposer's settings: recall vs time per image, and what the second core buys.

Data: the sample bag's photographs (scikit-image's astronaut, coffee, chelsea, rocket, motorcycle_left and camera,
23 hand-drawn boxes: chatrex_ros/data/sample_annotations.json) and a generated set of textured-shape scenes with
exact boxes (``synthetic_scenes``: 640x480, 3-7 rectangles and ellipses in their own colour and texture on a
cluttered background; boxes are the visible parts of the shapes).

1. The grid: every (mode, working size) runs once per image, timed as the node runs it (balanced with its two
   processes); the selection grid (min_score, minimum box size, NMS IoU; cap 900) is applied to its output and
   recall@10/30/100 at IoU 0.5 and averaged over 0.5:0.95 is measured as the evaluation does. Prints the Pareto
   front (time vs photos recall@100 at 0.5).
2. The parallelism, side by side, frames interleaved: the old default (fast@400, one core), balanced@320 in one
   process, in two (a colour space each), and two frames in flight (two one-process searches at once, which a
   "newest frame wins" node cannot use without answering late frames): latency and throughput.

Writes bench/results/proposals.json.

    python bench/bench_proposals.py [--synthetic 24]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
from _common import print_table, write_results

from chatrex_ros.core.proposals import DEFAULT_MIN_SCORE, DEFAULT_NMS_IOU, select_proposals
from chatrex_ros.eval.groundtruth import GroundTruth
from chatrex_ros.eval.metrics import proposal_recall
from chatrex_ros.eval.sample import load_sample_image, sample_annotations_path
from chatrex_ros.models.selective_search import SelectiveSearchBackend

MODES_AND_SIZES = [
    ("balanced", 256),
    ("balanced", 320),
    ("balanced", 400),
    ("fast", 320),
    ("fast", 400),
    ("fast", 480),
    ("single", 320),
    ("single", 400),
    ("single", 480),
    ("single", 640),
]
OLD_DEFAULT = {"mode": "fast", "long_side": 400}
DEFAULT = {"mode": "balanced", "long_side": 320}
MIN_SCORES = (DEFAULT_MIN_SCORE, 0.0)
MIN_BOX = (0.0005, 0.002)
NMS = (DEFAULT_NMS_IOU, 0.7, 0.6)
CAP = 900
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


def ranked_scores(count: int) -> np.ndarray:
    return 1.0 / (1.0 + 0.01 * np.arange(count))  # the backend's rank-decayed scores


def run_grid(datasets: dict[str, list]) -> list[dict]:
    results = []
    for mode, side in MODES_AND_SIZES:
        backend = SelectiveSearchBackend(long_side=side, mode=mode, min_box_fraction=0.0, max_candidates=100_000)
        backend.propose(datasets[next(iter(datasets))][0][0])  # starts the helper process
        raw: dict[str, list] = {}
        times: dict[str, list[float]] = {}
        for name, scenes in datasets.items():
            raw[name], times[name] = [], []
            for image, _ in scenes:
                start = time.perf_counter()
                out = backend.propose(image)
                times[name].append((time.perf_counter() - start) * 1e3)
                raw[name].append((out.boxes, image.shape))
        for min_score, min_box, nms in itertools.product(MIN_SCORES, MIN_BOX, NMS):
            entry: dict = {
                "mode": mode,
                "long_side": side,
                "min_score": min_score,
                "min_box_fraction": min_box,
                "nms_iou": nms,
                "ms_median": statistics.median(t for ts in times.values() for t in ts),
                "ms_median_per_dataset": {name: statistics.median(ts) for name, ts in times.items()},
            }
            for name, scenes in datasets.items():
                proposals = []
                for (boxes, shape), _ in zip(raw[name], scenes, strict=True):
                    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                    kept = boxes[area >= min_box * shape[0] * shape[1]][:CAP]
                    order = select_proposals(kept, ranked_scores(len(kept)), min_score=min_score, nms_iou=nms)
                    proposals.append(kept[order])
                entry[name] = recalls([truth for _, truth in scenes], proposals)
            results.append(entry)
    return results


def _search_once(args: tuple[np.ndarray, str, int, int]) -> float:
    """One frame in a pool process (two frames in flight); returns its wall milliseconds."""
    image, mode, side, workers = args
    backend = _pool_backend(mode, side, workers)
    start = time.perf_counter()
    backend.propose(image)
    return (time.perf_counter() - start) * 1e3


_POOL_BACKENDS: dict[tuple, SelectiveSearchBackend] = {}


def _pool_backend(mode: str, side: int, workers: int) -> SelectiveSearchBackend:
    key = (mode, side, workers)
    if key not in _POOL_BACKENDS:
        _POOL_BACKENDS[key] = SelectiveSearchBackend(long_side=side, mode=mode, workers=workers)
    return _POOL_BACKENDS[key]


def run_parallelism(images: list[np.ndarray], rounds: int) -> list[dict]:
    """Latency and throughput of the ways to use two cores, frames interleaved between the ways."""
    ways = {
        "fast@400, 1 process (old default)": SelectiveSearchBackend(long_side=400, mode="fast"),
        "balanced@320, 1 process": SelectiveSearchBackend(long_side=320, mode="balanced", workers=1),
        "balanced@320, 2 processes (default)": SelectiveSearchBackend(long_side=320, mode="balanced", workers=2),
    }
    for backend in ways.values():
        backend.propose(images[0])
    latency: dict[str, list[float]] = {name: [] for name in ways}
    wall: dict[str, float] = dict.fromkeys(ways, 0.0)
    for _ in range(rounds):
        for image in images:
            for name, backend in ways.items():
                start = time.perf_counter()
                backend.propose(image)
                elapsed = time.perf_counter() - start
                latency[name].append(elapsed * 1e3)
                wall[name] += elapsed
    rows = [
        {
            "way": name,
            "latency_median_ms": statistics.median(latency[name]),
            "latency_p90_ms": sorted(latency[name])[int(0.9 * (len(latency[name]) - 1))],
            "throughput_fps": len(latency[name]) / wall[name],
        }
        for name in ways
    ]
    # Two frames in flight: two one-process searches at a time, on two pool processes.
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_search_once, [(images[0], "balanced", 320, 1)] * 4))  # warm both processes
        jobs = [(image, "balanced", 320, 1) for _ in range(rounds) for image in images]
        start = time.perf_counter()
        in_flight = list(pool.map(_search_once, jobs))
        elapsed = time.perf_counter() - start
    rows.append(
        {
            "way": "balanced@320, 2 frames in flight (1 process each)",
            "latency_median_ms": statistics.median(in_flight),
            "latency_p90_ms": sorted(in_flight)[int(0.9 * (len(in_flight) - 1))],
            "throughput_fps": len(jobs) / elapsed,
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", type=int, default=24, help="generated scenes (default 24)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the images in the parallelism table")
    args = parser.parse_args()
    photos, synthetic = "sample photographs", f"{args.synthetic} synthetic scenes"
    datasets = {photos: sample_set(), synthetic: synthetic_scenes(args.synthetic)}

    results = run_grid(datasets)
    rows = [
        [
            e["mode"],
            e["long_side"],
            e["min_score"],
            e["min_box_fraction"],
            e["nms_iou"],
            e["ms_median"],
            e[photos]["R@100"],
            e[photos]["AR@100"],
            e[synthetic]["R@100"],
        ]
        for e in results
    ]
    print_table(
        ["mode", "side", "min score", "min box", "nms", "ms", "R@100 photos", "AR@100 photos", "R@100 synth"], rows
    )
    front = pareto([(e["ms_median"], e[photos]["R@100"], i) for i, e in enumerate(results)])
    print("\nPareto front (time, photos R@100 at IoU 0.5):")
    for ms, recall, index in front:
        e = results[index]
        print(
            f"  {e['mode']}@{e['long_side']} min_score={e['min_score']} min_box={e['min_box_fraction']} "
            f"nms={e['nms_iou']}: {ms:.0f} ms, R@100 {recall:.3f}"
        )

    def at_defaults(setting: dict) -> dict:
        return next(
            e
            for e in results
            if e["mode"] == setting["mode"]
            and e["long_side"] == setting["long_side"]
            and (e["min_score"], e["min_box_fraction"], e["nms_iou"]) == (DEFAULT_MIN_SCORE, 0.0005, DEFAULT_NMS_IOU)
        )

    old, new = at_defaults(OLD_DEFAULT), at_defaults(DEFAULT)
    comparison = {
        "old_default": old,
        "default": new,
        "time_ratio_640x480": new["ms_median_per_dataset"][synthetic] / old["ms_median_per_dataset"][synthetic],
        "time_ratio_all": new["ms_median"] / old["ms_median"],
    }
    print(
        f"\ndefault balanced@320 vs old fast@400 at the node's selection defaults: "
        f"{new['ms_median_per_dataset'][synthetic]:.0f} vs {old['ms_median_per_dataset'][synthetic]:.0f} ms per "
        f"640x480 frame ({100 * comparison['time_ratio_640x480']:.0f} %), photos R@100 {new[photos]['R@100']:.3f} vs "
        f"{old[photos]['R@100']:.3f}, synthetic R@100 {new[synthetic]['R@100']:.3f} vs {old[synthetic]['R@100']:.3f}"
    )

    parallel = run_parallelism([image for image, _ in datasets[synthetic]], args.rounds)
    print("\nTwo cores, side by side (the synthetic 640x480 frames, interleaved):")
    print_table(
        ["way", "latency median ms", "latency p90 ms", "throughput fps"],
        [[r["way"], r["latency_median_ms"], r["latency_p90_ms"], r["throughput_fps"]] for r in parallel],
    )
    path = write_results(
        "proposals",
        {
            "datasets": list(datasets),
            "results": results,
            "pareto": [results[i] for _, _, i in front],
            "default_vs_old": comparison,
            "parallelism": parallel,
        },
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
