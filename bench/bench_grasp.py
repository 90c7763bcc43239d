"""Cost of the grasp geometry per detection (point, surface normal, extent), side by side against a plain median.

Run: python bench/bench_grasp.py [--repeats N]
Prints a table and writes bench/results/grasp.json. The question it answers: what does the
foreground selection cost over the naive "median of the box" it replaces, and what does it buy
(error on a box that is mostly background)? Absolute times depend on the machine; the ratios in one
run are the comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from chatrex_ros.core.grasp import back_project, target_from_box

K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
OBJECT_DEPTH, WALL_DEPTH = 0.8, 1.5
OBJECT = (270, 190, 370, 290)  # 100x100 px object
BOX = (220, 140, 420, 340)  # 200x200 px detection box: the object fills 25 % of it
FULL_FRAME = (0, 0, 640, 480)  # the worst case: a box over the whole image


def make_scene(encoding: str) -> np.ndarray:
    """Wall at 1.5 m, object at 0.8 m, 2 mm noise, 10 % invalid pixels."""
    rng = np.random.default_rng(0)
    depth = np.full((480, 640), WALL_DEPTH)
    x1, y1, x2, y2 = OBJECT
    depth[y1:y2, x1:x2] = OBJECT_DEPTH
    depth += rng.normal(0.0, 0.002, depth.shape)
    invalid = rng.random(depth.shape) < 0.10
    if encoding == "16UC1":
        out = np.round(depth * 1000).astype(np.uint16)
        out[invalid] = 0
        return out
    out = depth.astype(np.float32)
    out[invalid] = np.nan
    return out


def naive_median(depth: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """The baseline: median of the valid pixels of the box, back-projected at the box centre."""
    x1, y1, x2, y2 = box
    crop = depth[y1:y2, x1:x2].astype(np.float32) * (0.001 if depth.dtype == np.uint16 else 1.0)
    z = float(np.median(crop[np.isfinite(crop) & (crop > 0)]))
    return back_project(K, (x1 + x2) / 2, (y1 + y2) / 2, z)


def time_ms(fn, repeats: int) -> float:
    """Median wall time of one call, in milliseconds (after a warm-up)."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()

    truth = np.array(back_project(K, 320.0, 240.0, OBJECT_DEPTH))
    rows = []
    for encoding in ("16UC1", "32FC1"):
        depth = make_scene(encoding)
        methods = {
            "naive median": lambda depth=depth: naive_median(depth, BOX),
            "target_from_box, foreground=False": lambda depth=depth: (
                target_from_box(depth, K, BOX, foreground=False).point
            ),
            "target_from_box (foreground)": lambda depth=depth: target_from_box(depth, K, BOX).point,
            "target_from_box, approach=surface_normal": lambda depth=depth: (
                target_from_box(depth, K, BOX, approach="surface_normal").point
            ),
            "full 640x480 box (foreground)": lambda depth=depth: target_from_box(depth, K, FULL_FRAME).point,
            "full 640x480 box, surface_normal": lambda depth=depth: (
                target_from_box(depth, K, FULL_FRAME, approach="surface_normal").point
            ),
        }
        baseline_ms = None
        for name, fn in methods.items():
            ms = time_ms(fn, args.repeats)
            baseline_ms = baseline_ms or ms
            error_cm = float(np.linalg.norm(np.asarray(fn()) - truth)) * 100
            rows.append(
                {"encoding": encoding, "method": name, "ms": ms, "ratio": ms / baseline_ms, "error_cm": error_cm}
            )

    print(f"{'encoding':8} {'method':42} {'ms':>8} {'x naive':>8} {'error cm':>9}")
    for r in rows:
        print(f"{r['encoding']:8} {r['method']:42} {r['ms']:8.3f} {r['ratio']:8.2f} {r['error_cm']:9.2f}")

    out = Path(__file__).resolve().parent / "results" / "grasp.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "box_px": [BOX[2] - BOX[0], BOX[3] - BOX[1]],
        "repeats": args.repeats,
        "machine": platform.processor() or platform.machine(),
        "numpy": np.__version__,
    }
    out.write_text(json.dumps({"benchmark": "grasp", "meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
