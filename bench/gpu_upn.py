"""GPU benchmark of the FULL upn_large (random weights): torch fp32 / fp16 / bf16 autocast / torch.compile,
then ONNX export at 750x1333 and ONNX Runtime when a CUDA provider exists.

Timings are CUDA-event medians of >= 20 forwards after warm-up, all variants in one run on one GPU, so the
ratios (speed-up over fp32) compare like with like. Random weights give the same cost as the official ones
(no data-dependent work except top-k). Needs a CUDA GPU; without one it exits with status 2 and says so.

    PYTHONPATH=. python bench/gpu_upn.py [--repeats 20] [--sizes 750x1333,800x1066] [--no-compile] [--no-onnx]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import time_cuda

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "gpu_upn.json"
MIN_REPEATS = 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sizes", default="750x1333,800x1066", help="network input HxW list")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (it takes minutes per size)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export + ONNX Runtime part")
    args = parser.parse_args()
    if args.repeats < MIN_REPEATS:
        parser.error(f"--repeats must be >= {MIN_REPEATS}")
    try:
        import torch
    except ImportError:
        print("gpu_upn: needs PyTorch with CUDA (pip install chatrex_ros[torch])", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_upn: no CUDA GPU visible to PyTorch; this benchmark only runs on a GPU machine", file=sys.stderr)
        return 2

    from chatrex_ros.models.upn.artifacts import parse_hw
    from chatrex_ros.models.upn.model import build_upn

    torch.manual_seed(0)
    model = build_upn("large", device="cuda")
    sizes = [parse_hw(s) for s in args.sizes.split(",")]
    result: dict[str, Any] = {
        "model": "upn_large, random weights",
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timing": "CUDA events around model(pixels, 'fine') under inference_mode; input already on the GPU",
        "sizes": {},
    }
    rows = []
    for height, width in sizes:
        pixels = torch.randn(1, 3, height, width, device="cuda")
        per_size: dict[str, Any] = {}

        def forward(dtype: Any = None, net: Any = model, inputs: Any = pixels) -> Any:
            def run() -> Any:
                with (
                    torch.inference_mode(),
                    torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None),
                ):
                    return net(inputs, "fine")

            return run

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        per_size["fp32"] = time_cuda(torch, forward(), args.repeats, args.warmup)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        per_size["fp32_tf32"] = time_cuda(torch, forward(), args.repeats, args.warmup)
        per_size["fp16_autocast"] = time_cuda(torch, forward(torch.float16), args.repeats, args.warmup)
        per_size["bf16_autocast"] = time_cuda(torch, forward(torch.bfloat16), args.repeats, args.warmup)
        if not args.no_compile:
            compiled = torch.compile(model)
            start = time.perf_counter()
            forward(torch.float16, compiled)()
            torch.cuda.synchronize()
            per_size["compile_s"] = time.perf_counter() - start
            per_size["compiled_fp16_autocast"] = time_cuda(
                torch, forward(torch.float16, compiled), args.repeats, args.warmup
            )
        base = per_size["fp32"]["median_ms"]
        for name, stats in per_size.items():
            if isinstance(stats, dict):
                stats["speedup_vs_fp32"] = base / stats["median_ms"]
                rows.append(
                    (f"{height}x{width}", name, stats["median_ms"], stats["speedup_vs_fp32"], stats["peak_mem_gib"])
                )
        result["sizes"][f"{height}x{width}"] = per_size

    if not args.no_onnx:
        result["onnx"] = onnx_part(torch, model, sizes[0], args.repeats, args.warmup, rows)

    print(f"UPN large (random weights) on {result['gpu']}, median of {args.repeats} after {args.warmup} warm-up")
    print(f"{'input':<10}{'variant':<26}{'median ms':>10}{'x fp32':>8}{'peak GiB':>10}")
    for size, name, ms, speedup, mem in rows:
        print(f"{size:<10}{name:<26}{ms:>10.1f}{speedup:>8.2f}{mem:>10.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS}")
    return 0


def onnx_part(torch: Any, model: Any, size: tuple[int, int], repeats: int, warmup: int, rows: list) -> dict[str, Any]:
    """Export at the first size; run ONNX Runtime on CUDA when the provider exists (else say why not)."""
    import numpy as np

    from chatrex_ros.models.upn.export import export_onnx

    out: dict[str, Any] = {"input_hw": list(size)}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "upn_large.onnx"
        start = time.perf_counter()
        export_onnx(model, path, size, "fine")
        out["export_s"], out["onnx_mib"] = time.perf_counter() - start, path.stat().st_size / 2**20
        try:
            import onnxruntime
        except ImportError:
            out["onnxruntime"] = "not installed (pip install onnxruntime-gpu)"
            return out
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            out["onnxruntime"] = (
                f"no CUDAExecutionProvider (has {onnxruntime.get_available_providers()}); pip install onnxruntime-gpu"
            )
            return out
        from chatrex_ros.models.upn.runtime_onnx import OnnxRuntimeUPNBackend

        backend = OnnxRuntimeUPNBackend(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        out["provider"] = backend.provider
        pixels = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
        for _ in range(warmup):
            backend.infer(pixels)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            backend.infer(pixels)
            samples.append((time.perf_counter() - start) * 1e3)
        out["median_ms_incl_host_copies"] = statistics.median(samples)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        with torch.inference_mode():
            reference = model(torch.from_numpy(pixels).cuda(), "fine")[0].float().cpu().numpy()
        out["max_abs_box_diff_vs_torch_fp32"] = float(np.abs(backend.infer(pixels)[0] - reference).max())
        rows.append(
            (
                f"{size[0]}x{size[1]}",
                f"onnxruntime ({backend.provider[:4]})",
                out["median_ms_incl_host_copies"],
                float("nan"),
                float("nan"),
            )
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
