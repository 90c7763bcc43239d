"""CPU benchmark: the tiny UPN on the torch backend vs the ONNX Runtime backend, measured side by side.

Both backends run the same frame in alternation (so machine load hits both alike); the table reports
medians and the torch/ORT ratio, and bench/results/upn_cpu.json keeps the raw timings. The tiny model
has random (seeded) weights from test/data/upn; its timings say nothing about upn_large's absolute
speed, only how the two runtimes compare on the same graph.

    PYTHONPATH=. python bench/bench_upn_cpu.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WEIGHTS = ROOT / "test" / "data" / "upn" / "tiny_state_dict.safetensors"
RESULTS = ROOT / "bench" / "results" / "upn_cpu.json"


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--camera", default="640x480", help="synthetic frame WIDTHxHEIGHT (tiny resize: short side 400)"
    )
    args = parser.parse_args()

    import onnxruntime
    import torch

    from chatrex_ros.models.base import ProposalPipeline
    from chatrex_ros.models.upn.checkpoint import load_upn_weights
    from chatrex_ros.models.upn.export import export_onnx
    from chatrex_ros.models.upn.model import build_upn
    from chatrex_ros.models.upn.processing import decode_outputs, prepare_image
    from chatrex_ros.models.upn.runtime_onnx import OnnxRuntimeUPNBackend
    from chatrex_ros.models.upn.runtime_torch import TorchUPNBackend

    width, height = (int(v) for v in args.camera.split("x"))
    frame = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    torch_backend = TorchUPNBackend(str(WEIGHTS), variant="tiny", granularity="fine")
    prepared = prepare_image(frame, torch_backend.config.resize_short, torch_backend.config.resize_max)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(scratch) / "upn_tiny.onnx"
        start = time.perf_counter()
        export_onnx(load_upn_weights(build_upn("tiny"), str(WEIGHTS)), onnx_path, prepared.resized_hw, "fine")
        export_s = time.perf_counter() - start
        ort_backend = OnnxRuntimeUPNBackend(str(onnx_path), providers=["CPUExecutionProvider"])

        timings: dict[str, list[float]] = {"preprocess": [], "torch_infer": [], "ort_infer": [], "decode": []}
        ProposalPipeline(torch_backend).warmup()
        ProposalPipeline(ort_backend).warmup()
        max_box_diff = 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            prepared = prepare_image(frame, torch_backend.config.resize_short, torch_backend.config.resize_max)
            t1 = time.perf_counter()
            torch_out = torch_backend.infer(prepared.pixels)
            t2 = time.perf_counter()
            ort_out = ort_backend.infer(prepared.pixels)
            t3 = time.perf_counter()
            decode_outputs(ort_out[0][0], ort_out[1][0], prepared.original_hw)
            t4 = time.perf_counter()
            for key, value in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                timings[key].append(value)
            max_box_diff = max(max_box_diff, float(np.abs(torch_out[0] - ort_out[0]).max()))

    medians = {k: median_ms(v) for k, v in timings.items()}
    ratio = medians["torch_infer"] / medians["ort_infer"]
    result = {
        "model": "upn tiny (test/data/upn weights)",
        "camera": args.camera,
        "input_hw": list(prepared.resized_hw),
        "repeats": args.repeats,
        "median_ms": medians,
        "torch_over_ort": ratio,
        "export_s": export_s,
        "max_abs_box_diff_torch_vs_ort": max_box_diff,
        "ort_provider": ort_backend.provider,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "samples_s": timings,
    }
    print(
        f"UPN tiny, {args.camera} camera -> input {prepared.resized_hw[0]}x{prepared.resized_hw[1]}, "
        f"{args.repeats} runs, medians"
    )
    print(f"{'stage':<14}{'ms':>10}")
    for key, value in medians.items():
        print(f"{key:<14}{value:>10.1f}")
    print(
        f"torch / ORT inference time ratio: {ratio:.2f}  "
        f"(max |boxes diff| {max_box_diff:.2e}, ORT on {ort_backend.provider})"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
