"""`chatrex-ros make-bag` throughput: frames/s for rgb8 vs jpeg messages, mcap vs sqlite3, at 640x480.

Run: python bench/bench_make_bag.py [--images N] [--runs N]
Generates N (default 300) 640x480 JPEG files (COCO's format) with annotated rectangles over a textured
background, converts them with every encoding x storage, and prints frames/s (the whole conversion: read and
decode the file, encode the message, write the bag, ground truth included), bag size and the process's peak RSS.
Writes bench/results/make_bag.json. The question: is a 5,000-image dataset a matter of seconds or minutes, and
which output is cheaper to write? Absolute numbers depend on the machine and its disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from _common import ROOT, print_table, write_results

sys.path.insert(0, str(ROOT))  # this tree's package, not an installed copy
from chatrex_ros.eval.make_bag import MakeBagOptions, make_bag  # noqa: E402

WIDTH, HEIGHT = 640, 480
COMBINATIONS = [("rgb8", "mcap"), ("jpeg", "mcap"), ("rgb8", "sqlite3"), ("jpeg", "sqlite3")]


def write_dataset(root: Path, count: int) -> tuple[Path, Path]:
    """JPEG files of rectangles over a noisy gradient (a photo-like cost for the encoders), and their COCO JSON."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    gradient = np.linspace(30, 200, WIDTH, dtype=np.float32)[None, :, None]
    images, annotations = [], []
    for image_id in range(1, count + 1):
        noise = rng.normal(0, 12, (HEIGHT, WIDTH, 3)).astype(np.float32)
        bgr = np.clip(gradient + noise, 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            w, h = int(rng.integers(40, 250)), int(rng.integers(40, 200))
            x, y = int(rng.integers(0, WIDTH - w)), int(rng.integers(0, HEIGHT - h))
            bgr[y : y + h, x : x + w] = rng.integers(0, 256, 3)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h], "iscrowd": 0}
            )
        name = f"{image_id:06d}.jpg"
        cv2.imwrite(str(images_dir / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": image_id, "file_name": name, "width": WIDTH, "height": HEIGHT})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return images_dir, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="640x480 images to generate (default 300)")
    parser.add_argument("--runs", type=int, default=3, help="conversions per combination; the median is reported")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="chatrex_bench_make_bag_") as tmp:
        images_dir, annotations = write_dataset(Path(tmp) / "dataset", args.images)
        dataset_mb = sum(p.stat().st_size for p in images_dir.iterdir()) / 1e6
        for encoding, storage in COMBINATIONS:
            runs = []
            for run in range(args.runs):
                out = Path(tmp) / f"{encoding}_{storage}_{run}"
                options = MakeBagOptions(
                    images_dir, annotations, out, storage=storage, encoding=encoding, progress=False
                )
                summary = make_bag(options)
                runs.append(
                    {
                        "frames_per_s": summary.frames_per_s,
                        "seconds": summary.seconds,
                        "bag_mb": summary.bag_bytes / 1e6,
                    }
                )
            median = statistics.median(r["frames_per_s"] for r in runs)
            rows.append(
                {
                    "encoding": encoding,
                    "storage": storage,
                    "frames": summary.images_written,
                    "frames_per_s": median,
                    "ms_per_frame": 1e3 / median,
                    "bag_mb": runs[0]["bag_mb"],
                    "runs": runs,
                }
            )
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"{args.images} images of {WIDTH}x{HEIGHT} ({dataset_mb:.1f} MB of JPEG files), median of {args.runs} runs")
    print_table(
        ["encoding", "storage", "frames/s", "ms/frame", "bag MB"],
        [[r["encoding"], r["storage"], r["frames_per_s"], r["ms_per_frame"], r["bag_mb"]] for r in rows],
    )
    print(f"peak RSS of the whole benchmark process: {peak_rss_mb:.0f} MB")
    path = write_results(
        "make_bag",
        {
            "images": args.images,
            "size": [WIDTH, HEIGHT],
            "source_files": "JPEG quality 90",
            "dataset_mb": dataset_mb,
            "runs": args.runs,
            "peak_rss_mb": peak_rss_mb,
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
