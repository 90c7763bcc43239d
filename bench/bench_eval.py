"""Offline evaluation throughput on the sample bag, and what bag reading and metrics cost beside the backend.

Run: python bench/bench_eval.py [--runs N] [--read-repeats N]
Prints a table and writes bench/results/eval.json. Both storages (mcap, sqlite3) are measured in the
same run with the weight-free selective-search backend. The question it answers: is the evaluation's own
overhead (stamp index + bag reading/decoding + metrics) small beside the model? Goal: under 5 % of a run.
Absolute times depend on the machine; the ratios within one run are the comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from chatrex_ros.eval.bagio import BagReader
from chatrex_ros.eval.groundtruth import GroundTruth, load_queries
from chatrex_ros.eval.offline import evaluate_bag
from chatrex_ros.eval.sample import SAMPLE_IMAGE_TOPIC, make_sample_bag, sample_annotations_path, sample_queries_path
from chatrex_ros.models.base import ProposalPipeline
from chatrex_ros.models.registry import make_proposal_backend

GOAL_OVERHEAD = 0.05


def read_pass_ms(bag: Path, repeats: int) -> float:
    """Median per-frame cost of the evaluation's reading path alone: open, stamp scan, deserialise, decode."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        with BagReader(bag) as reader:
            stamps = reader.image_stamps(SAMPLE_IMAGE_TOPIC)
            frames = 0
            for frame in reader.image_frames(SAMPLE_IMAGE_TOPIC, set(stamps)):
                frame.rgb()
                frames += 1
        samples.append((time.perf_counter() - start) * 1e3 / frames)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="evaluation runs per storage (the median is reported)")
    parser.add_argument("--read-repeats", type=int, default=20, help="repeats of the read-only pass")
    args = parser.parse_args()

    gt = GroundTruth.load(sample_annotations_path())
    queries = load_queries(sample_queries_path(), gt)
    pipeline = ProposalPipeline(make_proposal_backend("selective_search"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="chatrex_bench_eval_") as tmp:
        for storage in ("mcap", "sqlite3"):
            bag = make_sample_bag(Path(tmp) / storage, storage)
            runs = []
            for _ in range(args.runs):
                started = time.perf_counter()
                result = evaluate_bag(bag, gt, pipeline, None, queries, progress=False)
                wall_ms = (time.perf_counter() - started) * 1e3
                stages = result.stage_ms
                frames = len(stages["read"])
                read_ms = result.timing["open_ms"] + result.timing["index_ms"] + sum(stages["read"])
                backend_ms = sum(stages["infer"]) + sum(stages["select"])
                metrics_ms = result.timing["metrics_ms"]
                runs.append(
                    {
                        "wall_ms": wall_ms,
                        "frames": frames,
                        "read_ms": read_ms,
                        "backend_ms": backend_ms,
                        "metrics_ms": metrics_ms,
                    }
                )
            run = sorted(runs, key=lambda r: r["wall_ms"])[len(runs) // 2]
            read_only = read_pass_ms(bag, args.read_repeats)
            backend_per_frame = run["backend_ms"] / run["frames"]
            rows.append(
                {
                    "storage": storage,
                    "frames": run["frames"],
                    "frames_per_s": run["frames"] / (run["wall_ms"] / 1e3),
                    "read_ms_per_frame": run["read_ms"] / run["frames"],
                    "read_only_pass_ms_per_frame": read_only,
                    "backend_ms_per_frame": backend_per_frame,
                    "metrics_ms": run["metrics_ms"],
                    "read_vs_backend": read_only / backend_per_frame,
                    "overhead_share": (run["read_ms"] + run["metrics_ms"]) / run["wall_ms"],
                    "runs": runs,
                }
            )

    print("read ms/fr: open + stamp index + deserialise + decode inside the run; read-only: the same path alone")
    print(
        f"{'storage':8} {'frames/s':>9} {'read ms/fr':>11} {'read-only':>10} {'backend ms/fr':>14} "
        f"{'metrics ms':>11} {'read/backend':>13} {'read+metrics':>13}"
    )
    for r in rows:
        print(
            f"{r['storage']:8} {r['frames_per_s']:9.2f} {r['read_ms_per_frame']:11.2f} "
            f"{r['read_only_pass_ms_per_frame']:10.2f} "
            f"{r['backend_ms_per_frame']:14.1f} {r['metrics_ms']:11.1f} {r['read_vs_backend']:13.4f} "
            f"{100 * r['overhead_share']:12.2f}%"
        )
    worst = max(r["overhead_share"] for r in rows)
    print(
        f"goal: reading + metrics < {100 * GOAL_OVERHEAD:.0f} % of the run -> worst {100 * worst:.2f} % "
        f"({'met' if worst < GOAL_OVERHEAD else 'NOT met'})"
    )

    out = Path(__file__).resolve().parent / "results" / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "bag": "sample (6 scikit-image photographs)",
        "backend": "selective_search",
        "runs": args.runs,
        "read_repeats": args.read_repeats,
        "machine": platform.processor() or platform.machine(),
        "numpy": np.__version__,
        "goal_overhead_share": GOAL_OVERHEAD,
        "goal_met": worst < GOAL_OVERHEAD,
    }
    out.write_text(json.dumps({"benchmark": "eval", "meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
