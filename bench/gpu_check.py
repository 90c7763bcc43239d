"""One GPU check of the proposal backends and the language model's cost, in one run on one GPU, into one JSON.

What it measures (all in one process, one GPU, within ``--budget-s``, default 540 s):

1. the environment: GPU, driver and CUDA versions as torch sees them (and nvidia-smi), the versions of torch,
   onnxruntime, onnx, tensorrt, cuda-python and transformers, and ONNX Runtime's providers;
2. the LARGE UPN with random weights (seed 0) at 750x1333: torch fp32 (TF32 off) and bf16 autocast, CUDA-event
   medians after warm-up (``_common.time_cuda``, as gpu_upn.py) and peak memory;
3. its ONNX export (the package's exporter, fine prompt) and ONNX Runtime on the CUDA provider;
4. TensorRT fp16 and fp32 engines built by the package's engine code in a temporary cache: build time, latency;
5. proposal agreement against torch fp32 on one fixed synthetic image (bright rectangles on noise): each backend's
   top-100 boxes by score, decoded as the package does, the fraction of the reference's top-100 matched at
   IoU >= 0.9 and whether the top-1 boxes match (``_agreement.top_k_agreement``);
6. the 7B decoder proxy of gpu_language.py, run through its own ``main()``.

ONNX Runtime and TensorRT latencies are host-timed calls of the backends' ``infer`` (they include the input and
output copies between host and GPU); the torch ones are CUDA events around the forward of an on-GPU tensor.
A part that cannot run is recorded as ``{"skipped": why}``, one that fails as ``{"error": ...}`` (the others still
run); when the budget runs out the remaining parts are recorded as ``skipped: budget``, and a part still running at
the deadline is stopped. The JSON is rewritten after every part, so it always exists once CUDA was found
("complete": true once no part was cut by the budget). Without a CUDA GPU it prints one line, writes nothing and
exits with status 2. Exit status 1: some part failed (see its "error"); 0 otherwise.

    bench/gpu_check.sh    # = PYTHONPATH=. timeout 570 python bench/gpu_check.py --out bench/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _path in (str(BENCH), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _common import print_table, time_cuda  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "gpu_check.json"
NO_CUDA = "no CUDA GPU: run this on a CUDA machine"
DEVICE = "cuda"
ORT_PROVIDER = "CUDAExecutionProvider"
REFERENCE = "torch_fp32"
PROMPT = "fine"
SEED = 0
TOP_K, MATCH_IOU = 100, 0.9
PARTS: tuple[tuple[str, float], ...] = (
    # (name, seconds it needs at least to be worth starting: rough H200 guesses, the deadline stops overruns)
    ("upn_build", 20),
    ("torch_fp32", 20),
    ("torch_bf16", 15),
    ("language_7b", 60),
    ("onnx_export", 60),
    ("onnxruntime_cuda", 40),
    ("tensorrt_fp16", 90),
    ("tensorrt_fp32", 60),
)
"""In run order: the cheap torch parts and the language proxy first, the TensorRT builds (minutes) last."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON to write (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting parts after this (seconds)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    parser.add_argument("--size", default="750x1333", help="UPN input HxW (default: %(default)s)")
    parser.add_argument("--variant", default="large", help="UPN variant (default: %(default)s; tiny for a dry run)")
    parser.add_argument("--checkpoint", default=None, help="optional upn_large.pth instead of random weights")
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to leave out: " + ", ".join(n for n, _ in PARTS)
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.budget_s <= 0:
        parser.error("--repeats must be >= 1, --warmup >= 0 and --budget-s > 0")
    unknown = {s.strip() for s in args.skip.split(",") if s.strip()} - {n for n, _ in PARTS}
    if unknown:
        parser.error(f"--skip: unknown part(s) {', '.join(sorted(unknown))}")
    return args


# --- the run: parts, outputs for the agreement, the JSON, the deadline ---------------------------------------


class Check:
    """The results so far, written to ``out`` after every part; a timer finishes the run at the deadline."""

    def __init__(self, out: Path, budget_s: float, started: float, config: dict[str, Any]) -> None:
        self.out, self.budget_s, self.started = out, budget_s, started
        self.deadline = started + budget_s
        self.lock = threading.RLock()
        self.result: dict[str, Any] = {
            "script": "bench/gpu_check.py",
            "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "budget_s": budget_s,
            "complete": False,
            "config": config,
            "env": {},
            "parts": {},
            "agreement": {},
        }
        self.outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.running: tuple[str, float] | None = None
        self.finished = False
        self.scratch: Path | None = None  # removed by on_deadline (the main thread's cleanup will not run)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def part(self, name: str) -> dict[str, Any]:
        return dict(self.result["parts"].get(name, {}))

    def ok(self, name: str) -> bool:
        entry = self.result["parts"].get(name)
        return entry is not None and "skipped" not in entry and "error" not in entry

    def keep_output(self, name: str, boxes: np.ndarray, scores: np.ndarray) -> None:
        with self.lock:
            self.outputs[name] = (np.asarray(boxes), np.asarray(scores))

    def record(self, name: str, value: dict[str, Any]) -> None:
        with self.lock:
            if self.finished:
                return
            self.result["parts"][name] = value
            self.running = None
            self.write()

    def run(self, name: str, needs_s: float, skip: set[str], func: Callable[[], dict[str, Any]]) -> None:
        if name in skip:
            self.record(name, {"skipped": "left out with --skip"})
            return
        left = self.remaining()
        if left < needs_s:
            self.record(name, {"skipped": f"budget: {max(left, 0):.0f} s left, this part needs about {needs_s:.0f} s"})
            return
        with self.lock:
            self.running = (name, time.monotonic())
        start = time.perf_counter()
        try:
            value = func()
        except Exception as error:  # a failed part is a result; the others still run
            value = {"error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exc()[-3000:]}
            _free_gpu_memory()
        value.setdefault("part_wall_s", round(time.perf_counter() - start, 2))
        self.record(name, value)

    def finish(self, stopped_part: str | None = None) -> bool:
        """Agreement, budget skips for whatever did not run, the final JSON; False if already finished."""
        with self.lock:
            if self.finished:
                return False
            parts = self.result["parts"]
            if stopped_part is not None:
                parts[stopped_part] = {
                    "skipped": f"budget: still running when the {self.budget_s:.0f} s budget ran out (stopped)"
                }
            for name, _ in PARTS:
                parts.setdefault(name, {"skipped": "budget: the budget ran out before this part"})
            try:
                self.result["agreement"] = agreement(self.outputs)
            except Exception as error:  # the measurements are written whatever happens here
                self.result["agreement"] = {"error": f"{type(error).__name__}: {error}"}
            self.result["complete"] = stopped_part is None and not any(
                str(p.get("skipped", "")).startswith("budget") for p in parts.values()
            )
            self.result["wall_s"] = round(time.monotonic() - self.started, 1)
            self.write()
            self.finished = True
            return True

    def on_deadline(self) -> None:
        """Timer thread: the budget is spent while a part runs (a TensorRT build cannot be interrupted): stop."""
        with self.lock:
            running = self.running[0] if self.running else None
            if not self.finish(stopped_part=running):
                return
            print(f"gpu_check: budget of {self.budget_s:.0f} s spent during {running}: stopping", file=sys.stderr)
            summarise(self.result, self.out)
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)  # the ONNX file and engines: gigabytes
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_status(self.result))

    def write(self) -> None:
        """Replace the JSON atomically (a reader, or a kill by ``timeout``, never leaves half a file)."""
        with self.lock:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.result, indent=1, default=str) + "\n")
            os.replace(temporary, self.out)


def agreement(outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Every backend's top-k against the torch fp32 reference (see ``_agreement.top_k_agreement``)."""
    from _agreement import top_k_agreement

    if REFERENCE not in outputs:
        return {"skipped": f"no {REFERENCE} reference output"}
    ref_boxes, ref_scores = outputs[REFERENCE]
    result: dict[str, Any] = {
        "reference": REFERENCE,
        "rule": f"top-{TOP_K} by score each; reference box matched if IoU >= {MATCH_IOU} with any of the other's",
    }
    for name, (boxes, scores) in outputs.items():
        if name != REFERENCE:
            result[name] = top_k_agreement(ref_boxes, ref_scores, boxes, scores, k=TOP_K, iou=MATCH_IOU)
    return result


def exit_status(result: dict[str, Any]) -> int:
    return 1 if any("error" in p for p in result["parts"].values()) else 0


# --- environment ---------------------------------------------------------------------------------------------


def _version(module_name: str) -> tuple[str | None, str | None]:
    """(version, None) or (None, why it does not import)."""
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or a broken install raising anything else
        return None, f"{type(error).__name__}: {error}"
    return str(getattr(module, "__version__", "unknown")), None


def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"failed: {error}"
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else f"failed: {done.stderr.strip()[:200]}"


def probe_environment(torch: Any) -> dict[str, Any]:
    from chatrex_ros.models.upn.engine_cache import package_version
    from chatrex_ros.models.upn.runtime_tensorrt import cuda_python_version, import_cudart

    properties = torch.cuda.get_device_properties(0)
    driver = getattr(torch._C, "_cuda_getDriverVersion", None)  # private but long-standing; int like 12040
    driver_cuda = None
    with contextlib.suppress(Exception):
        value = int(driver()) if driver else 0
        driver_cuda = f"{value // 1000}.{value % 1000 // 10}" if value else None
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "gpu": {
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "compute_capability": "{}.{}".format(*torch.cuda.get_device_capability(0)),
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        },
        "cuda": {
            "torch_built_for_cuda": torch.version.cuda,
            "driver_supports_cuda": driver_cuda,
            "cudnn": torch.backends.cudnn.version(),
            "nvidia_smi": _nvidia_smi(),
        },
        "versions": {"chatrex_ros": package_version(), "torch": torch.__version__, "numpy": np.__version__},
        "import_errors": {},
    }
    for name in ("onnx", "onnxruntime", "tensorrt", "transformers"):
        version, error = _version(name)
        env["versions"][name] = version
        if error:
            env["import_errors"][name] = error
    env["versions"]["cuda-python"] = cuda_python_version()
    try:
        import_cudart()
    except ImportError as error:
        env["import_errors"]["cuda-python"] = str(error)
    if env["versions"]["onnxruntime"]:
        import onnxruntime

        env["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    return env


# --- the parts -------------------------------------------------------------------------------------------------


def structured_image(height: int, width: int, seed: int = SEED) -> np.ndarray:
    """A fixed (H, W, 3) uint8 scene: dim noise, a gradient, and a few bright and dark rectangles of known places."""
    rng = np.random.default_rng(seed)
    image = rng.normal(60, 18, (height, width, 3))
    image += np.linspace(0, 40, width)[None, :, None]
    rectangles = [  # (top, left, bottom, right) as fractions of the image, RGB
        ((0.10, 0.08, 0.45, 0.30), (235, 40, 40)),
        ((0.55, 0.12, 0.90, 0.25), (40, 220, 60)),
        ((0.20, 0.40, 0.60, 0.62), (250, 250, 250)),
        ((0.65, 0.45, 0.80, 0.85), (50, 80, 240)),
        ((0.08, 0.70, 0.35, 0.95), (240, 210, 30)),
        ((0.40, 0.75, 0.55, 0.82), (10, 10, 10)),
    ]
    for (top, left, bottom, right), colour in rectangles:
        rows = slice(int(top * height), int(bottom * height))
        cols = slice(int(left * width), int(right * width))
        image[rows, cols] = np.asarray(colour, dtype=np.float64) + rng.normal(0, 6, image[rows, cols].shape)
    return np.clip(image, 0, 255).astype(np.uint8)


class Parts:
    """The measurements; each returns its part's JSON entry (or raises, which becomes its "error")."""

    def __init__(self, check: Check, torch: Any, args: argparse.Namespace, scratch: Path) -> None:
        from chatrex_ros.models.upn.artifacts import parse_hw
        from chatrex_ros.models.upn.processing import normalise

        self.check, self.torch, self.args, self.scratch = check, torch, args, scratch
        self.hw = parse_hw(args.size)
        self.image = structured_image(*self.hw)
        self.pixels = normalise(self.image)  # the image is already the network size: no resize
        self.model: Any = None
        self.onnx_path = scratch / f"upn_{args.variant}_{self.hw[0]}x{self.hw[1]}_{PROMPT}.onnx"

    def keep(self, name: str, boxes: Any, logits: Any) -> None:
        """Decode one image's raw outputs the package's way (xyxy in image pixels, sigmoid scores) and keep them."""
        from chatrex_ros.models.upn.processing import decode_outputs

        raw = decode_outputs(np.asarray(boxes)[0], np.asarray(logits)[0], self.hw)
        self.check.keep_output(name, raw.boxes, raw.scores)

    def upn_build(self) -> dict[str, Any]:
        torch = self.torch
        from chatrex_ros.models.upn.model import build_upn

        torch.manual_seed(SEED)
        start = time.perf_counter()
        model = build_upn(self.args.variant, device=DEVICE)
        weights = f"random (torch.manual_seed({SEED}))"
        if self.args.checkpoint:
            from chatrex_ros.models.upn.checkpoint import load_upn_weights

            load_upn_weights(model, self.args.checkpoint)
            weights = str(self.args.checkpoint)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        self.model = model.eval()
        parameters = {id(p): p for p in model.parameters()}.values()  # the shared box head counts once
        return {
            "variant": self.args.variant,
            "weights": weights,
            "build_s": round(time.perf_counter() - start, 2),
            "parameters_m": round(sum(p.numel() for p in parameters) / 1e6, 1),
            "input_hw": list(self.hw),
        }

    def _torch_variant(self, name: str, dtype: Any) -> dict[str, Any]:
        torch = self.torch
        if self.model is None:
            return {"skipped": "needs upn_build"}
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (TF32 would round to 10-bit mantissas)
        torch.backends.cudnn.allow_tf32 = False
        x = torch.from_numpy(self.pixels).to(DEVICE)

        def forward() -> Any:
            with (
                torch.inference_mode(),
                torch.autocast(DEVICE, dtype=dtype if dtype is not None else torch.bfloat16, enabled=dtype is not None),
            ):
                return self.model(x, PROMPT)

        stats = time_cuda(torch, forward, self.args.repeats, self.args.warmup)
        boxes, logits = forward()
        self.keep(name, boxes.float().cpu().numpy(), logits.float().cpu().numpy())
        return {
            **stats,
            "repeats": self.args.repeats,
            "warmup": self.args.warmup,
            "precision": "fp32, TF32 off" if dtype is None else f"{dtype} autocast (TF32 off)",
            "timing": f"CUDA events around model(pixels, {PROMPT!r}) under inference_mode; input already on the GPU",
        }

    def torch_fp32(self) -> dict[str, Any]:
        return self._torch_variant("torch_fp32", None)

    def torch_bf16(self) -> dict[str, Any]:
        return self._torch_variant("torch_bf16", self.torch.bfloat16)

    def language_7b(self) -> dict[str, Any]:
        """gpu_language.py's own main() (its Llama-2-7B-shaped decoder), its JSON redirected to a scratch file."""
        import gpu_language

        own_results, own_argv = gpu_language.RESULTS, sys.argv
        gpu_language.RESULTS = self.scratch / "gpu_language.json"
        sys.argv = ["gpu_language.py"]  # its defaults: 816-token context, 60 new tokens, 20 repeats
        printed, warnings = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(warnings):
                status = gpu_language.main()
        finally:
            gpu_language.RESULTS, sys.argv = own_results, own_argv
            _free_gpu_memory()
        if status == 2:
            return {"skipped": warnings.getvalue().strip().splitlines()[-1] if warnings.getvalue().strip() else "rc 2"}
        if status != 0:
            return {"error": f"gpu_language.main() returned {status}: {warnings.getvalue().strip()[-500:]}"}
        measured = json.loads(gpu_language.RESULTS.read_text())
        return {"via": "bench/gpu_language.py main()", **measured}

    def onnx_export(self) -> dict[str, Any]:
        if self.model is None:
            return {"skipped": "needs upn_build"}
        from chatrex_ros.models.upn.export import export_onnx

        start = time.perf_counter()
        export_onnx(self.model, self.onnx_path, self.hw, PROMPT)
        return {
            "export_s": round(time.perf_counter() - start, 2),
            "onnx_mib": round(self.onnx_path.stat().st_size / 2**20, 1),
            "prompt": PROMPT,
            "input_hw": list(self.hw),
        }

    def _needs_onnx(self) -> dict[str, Any] | None:
        if not self.check.ok("onnx_export") or not self.onnx_path.is_file():
            reason = self.check.part("onnx_export")
            return {"skipped": f"needs the ONNX export (onnx_export: {reason.get('skipped') or reason.get('error')})"}
        return None

    def onnxruntime_cuda(self) -> dict[str, Any]:
        missing = self._needs_onnx()
        if missing:
            return missing
        try:
            import onnxruntime
        except ImportError as error:
            return {"skipped": f"onnxruntime does not import ({error}); pip install onnxruntime-gpu"}
        available = list(onnxruntime.get_available_providers())
        if ORT_PROVIDER not in available:
            return {"skipped": f"no {ORT_PROVIDER} in this onnxruntime (has {available}); pip install onnxruntime-gpu"}
        from chatrex_ros.models.registry import make_proposal_backend

        start = time.perf_counter()
        backend: Any = make_proposal_backend("onnxruntime", onnx_path=str(self.onnx_path), providers=[ORT_PROVIDER])
        session_s = time.perf_counter() - start
        if backend.provider != ORT_PROVIDER:
            return {"skipped": f"{ORT_PROVIDER} did not load (the session got {backend.provider}); see ORT's log"}
        run = functools.partial(backend.infer, self.pixels)
        try:
            stats = time_host(run, self.args.repeats, self.args.warmup)
            self.keep("onnxruntime_cuda", *backend.infer(self.pixels))
            return {
                **stats,
                "session_s": round(session_s, 2),
                "provider": backend.provider,
                "device_mem_used_gib": _device_memory_used(self.torch),
                "timing": "host clock around backend.infer (includes host<->GPU copies of input and outputs)",
            }
        finally:
            del run, backend  # the ONNX Runtime session / engine hold GPU memory
            _free_gpu_memory()

    def tensorrt(self, precision: str) -> dict[str, Any]:
        missing = self._needs_onnx()
        if missing:
            return missing
        try:
            import tensorrt
        except ImportError as error:
            return {"skipped": f"tensorrt does not import ({error}); pip install chatrex_ros[tensorrt]"}
        if precision == "fp16" and not hasattr(tensorrt.BuilderFlag, "FP16"):
            return {"skipped": f"TensorRT {tensorrt.__version__} has no weak typing (BuilderFlag.FP16): no fp16 engine"}
        from chatrex_ros.models.registry import make_proposal_backend
        from chatrex_ros.models.upn.runtime_tensorrt import ensure_engine, import_cudart

        try:
            import_cudart()
        except ImportError as error:
            return {"skipped": f"cuda-python does not import: {error}"}
        _free_gpu_memory()
        cache = self.scratch / "engines"
        start = time.perf_counter()
        entry = ensure_engine(self.onnx_path, cache, precision=precision, gpu_index=0)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        backend: Any = make_proposal_backend(
            "tensorrt", onnx_path=str(self.onnx_path), engine_cache_dir=str(cache), precision=precision, gpu_index=0
        )
        load_s = time.perf_counter() - start
        run = functools.partial(backend.infer, self.pixels)
        try:
            stats = time_host(run, self.args.repeats, self.args.warmup)
            self.keep(f"tensorrt_{precision}", *backend.infer(self.pixels))
            return {
                **stats,
                "precision": precision,
                "build_s": round(build_s, 2),
                "load_s": round(load_s, 2),
                "engine_mib": round(entry.engine_path.stat().st_size / 2**20, 1),
                "engine": entry.engine_path.name,
                "tensorrt": str(tensorrt.__version__),
                "device_mem_used_gib": _device_memory_used(self.torch),
                "timing": "host clock around backend.infer (includes host<->GPU copies of input and outputs)",
            }
        finally:
            backend.close()
            del run, backend  # the ONNX Runtime session / engine hold GPU memory
            _free_gpu_memory()


def time_host(run: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    """Median / min / max wall-clock milliseconds of a call that returns when its GPU work is done."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples)}


def _device_memory_used(torch: Any) -> float | None:
    """GPU memory in use by everything (this process's torch cache, ONNX Runtime, TensorRT), GiB."""
    try:
        free, total = torch.cuda.mem_get_info()
    except Exception:
        return None
    return round((total - free) / 2**30, 2)


def _free_gpu_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and DEVICE == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


# --- output ------------------------------------------------------------------------------------------------------


def _status(entry: dict[str, Any]) -> str:
    if "skipped" in entry:
        return ("skipped: " + str(entry["skipped"]))[:70]
    if "error" in entry:
        return ("ERROR: " + str(entry["error"]).splitlines()[0])[:70]
    return "ok"


def summarise(result: dict[str, Any], out: Path) -> None:
    gpu = result["env"].get("gpu", {}).get("name", "?")
    print(
        f"gpu_check on {gpu}: {result['config']['variant']} UPN at {result['config']['size']}, "
        f"{result['wall_s']} s of a {result['budget_s']:.0f} s budget"
    )
    rows = []
    for name, entry in result["parts"].items():
        agree = result["agreement"].get(name, {})
        if name == REFERENCE and name in result["agreement"].get("reference", ""):
            agree = {"fraction": 1.0, "top1_match": "reference"}
        note = ""
        if name == "language_7b" and "prefill_ms" in entry:
            note = f"prefill {entry['prefill_ms']:.1f} ms, {entry['decode_ms_per_token']:.2f} ms/token"
        elif "build_s" in entry or "export_s" in entry or "session_s" in entry:
            key = next(k for k in ("build_s", "export_s", "session_s") if k in entry)
            note = f"{key} {entry[key]}"
        rows.append(
            [
                name,
                _status(entry),
                f"{entry['median_ms']:.1f}" if "median_ms" in entry else "",
                f"{entry['peak_mem_gib']:.2f}" if "peak_mem_gib" in entry else "",
                f"{agree['fraction']:.2f}" if "fraction" in agree else "",
                str(agree.get("top1_match", "")),
                note,
            ]
        )
    print_table(["part", "status", "median ms", "peak GiB", f"top-{TOP_K} IoU>={MATCH_IOU}", "top-1", "note"], rows)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print(f"{NO_CUDA} (PyTorch is not installed)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2

    out = args.out.expanduser().resolve()
    config = {
        "variant": args.variant,
        "size": args.size,
        "prompt": PROMPT,
        "seed": SEED,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "agreement": {"reference": REFERENCE, "k": TOP_K, "iou": MATCH_IOU, "image": "structured_image(seed 0)"},
    }
    check = Check(out, args.budget_s, started, config)
    check.result["env"] = probe_environment(torch)
    check.write()  # the JSON exists from here on
    timer = threading.Timer(max(check.remaining(), 0.0), check.on_deadline)
    timer.daemon = True
    timer.start()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        check.scratch = Path(scratch)
        parts = Parts(check, torch, args, check.scratch)
        actions: dict[str, Callable[[], dict[str, Any]]] = {
            "upn_build": parts.upn_build,
            "torch_fp32": parts.torch_fp32,
            "torch_bf16": parts.torch_bf16,
            "language_7b": parts.language_7b,
            "onnx_export": parts.onnx_export,
            "onnxruntime_cuda": parts.onnxruntime_cuda,
            "tensorrt_fp16": lambda: parts.tensorrt("fp16"),
            "tensorrt_fp32": lambda: parts.tensorrt("fp32"),
        }
        for name, needs_s in PARTS:
            check.run(name, needs_s, skip, actions[name])
        timer.cancel()
        if not check.finish():
            return exit_status(check.result)  # the deadline timer finished it (it exits the process itself)
    summarise(check.result, out)
    return exit_status(check.result)


if __name__ == "__main__":
    sys.exit(main())
