"""UPN on TensorRT: build (or load from the cache) an engine from the exported ONNX file and run it.

Targets the TensorRT 10 Python API (named I/O tensors, ``execute_async_v3``) with cuda-python 12 for device
memory. Device buffers are allocated once; per frame only the pre-processed input goes host -> device and
the two outputs come back. fp16 engines use TensorRT's weak typing (``BuilderFlag.FP16``) with the layers where
fp16 changes the answer (top-k query selection and its scores, deformable attention, the name scopes of
``FP32_NAME_PATTERNS``; see :mod:`.precision`) constrained to fp32 and TF32 off, so fp32 there means fp32.
TensorRT 11 removed weak typing, so there only fp32 engines are offered (a clear error says so).

NOT run on a GPU here (no GPU, no TensorRT): written against the TensorRT 10 and cuda-python 12 documentation and
tested against test doubles of both modules; see docs/models.md. The cache logic (:mod:`.engine_cache`) and the
fp32 selection (:mod:`.precision`) are pure Python and tested directly.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from chatrex_ros.core.types import RawProposals

from .artifacts import (
    BOXES_NAME,
    EXPORT_HINT,
    FP32_NAME_PATTERNS,
    LOGITS_NAME,
    file_sha256,
    read_metadata,
    require_file,
)
from .engine_cache import (
    DEFAULT_PRECISION,
    PRECISIONS,
    BuilderSettings,
    CachedEngine,
    EngineKey,
    cache_entry,
    ensure_built,
    package_version,
)
from .precision import RULE_VERSION, layer_graph, pin_layers, select_fp32_layers
from .processing import decode_outputs, prepare_image

LOG = logging.getLogger(__name__)
INSTALL_HINT = (
    "the tensorrt backend needs TensorRT 10 and cuda-python on a CUDA machine: pip install chatrex_ros[tensorrt]"
)
WORKSPACE_BYTES = 4 << 30
OPTIMIZATION_LEVEL = 3
"""TensorRT's default builder optimisation level, set explicitly so that it is a known part of the cache key."""
CUDA_PYTHON_MAJOR = 12
"""The cuda-python major version this code is written for (the ``cuda-python>=12.0,<13`` bound of the extra)."""


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or an ImportError saying what to install."""
    try:
        import tensorrt
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's CUDA runtime bindings (new or old module layout), or an ImportError saying what to install."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as error:
            raise ImportError(INSTALL_HINT) from error
    return cudart


def _cuda_call(cudart: Any, result: Any) -> Any:
    """cuda-python returns (error, *values): raise on error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else tuple(values)


def cuda_python_version() -> str | None:
    """The installed cuda-python (or, from 12.6 on, its cuda-bindings) version; None when neither is recorded."""
    for distribution in ("cuda-python", "cuda-bindings"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def driver_mismatch(driver_version: int, bindings_version: str) -> str | None:
    """The one-line error when cuda-python ``bindings_version`` cannot run on this driver, else None.

    ``driver_version`` is ``cudaDriverGetVersion``'s 1000 * major + 10 * minor (0: no driver). cuda-python of
    major M is built against CUDA M and needs a driver for CUDA M or newer; without this check a CUDA 12 driver
    with cuda-python 13 fails later with an opaque "driver insufficient" from the first CUDA call.
    """
    try:
        major = int(bindings_version.split(".")[0])
    except ValueError:
        return None  # an unparsable version: let the CUDA calls speak
    fix = f"pip install 'cuda-python>={CUDA_PYTHON_MAJOR}.0,<{CUDA_PYTHON_MAJOR + 1}' (what chatrex_ros[tensorrt] pins)"
    if driver_version <= 0:
        return (
            f"cuda-python {bindings_version} found no NVIDIA driver (cudaDriverGetVersion gave {driver_version}): "
            f"install an NVIDIA driver for CUDA {max(major, CUDA_PYTHON_MAJOR)} or newer"
        )
    driver_major, driver_minor = driver_version // 1000, driver_version % 1000 // 10
    if driver_major >= major:
        return None
    if driver_major >= CUDA_PYTHON_MAJOR:
        action = f"{fix}, or upgrade the NVIDIA driver to one for CUDA {major}"
    else:
        action = f"upgrade the NVIDIA driver to one for CUDA {CUDA_PYTHON_MAJOR} or newer, then {fix}"
    return (
        f"cuda-python {bindings_version} needs an NVIDIA driver for CUDA {major} or newer, but the installed driver "
        f"supports CUDA {driver_major}.{driver_minor}: {action}"
    )


def require_cuda_driver(cudart: Any, bindings_version: str | None = None) -> None:
    """RuntimeError (one line: installed, needed, what to do) when the driver is too old for this cuda-python."""
    version = bindings_version or cuda_python_version()
    if version is None:
        LOG.debug("cuda-python's version is not recorded: driver check skipped")
        return
    problem = driver_mismatch(int(_cuda_call(cudart, cudart.cudaDriverGetVersion())), version)
    if problem:
        raise RuntimeError(problem)


def select_gpu(cudart: Any, gpu_index: int) -> None:
    """Make ``gpu_index`` this thread's CUDA device, with a clear error when there is no such GPU."""
    count = int(_cuda_call(cudart, cudart.cudaGetDeviceCount()))
    if not 0 <= gpu_index < count:
        raise ValueError(
            f"gpu_index {gpu_index} does not exist: this machine has {count} CUDA device(s) (0..{count - 1})"
        )
    _cuda_call(cudart, cudart.cudaSetDevice(gpu_index))


def gpu_facts(cudart: Any, device: int = 0) -> tuple[str, str]:
    """(model name, compute capability "8.9") of a CUDA device: a plan only runs on the GPU it was built for."""
    properties = _cuda_call(cudart, cudart.cudaGetDeviceProperties(device))
    name = properties.name
    text = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()
    return text, f"{int(properties.major)}.{int(properties.minor)}"


def onnx_facts(onnx_path: Path) -> tuple[tuple[int, ...], dict[str, str]]:
    """(static input shape, our metadata) of an exported file, read with the ``onnx`` package."""
    try:
        import onnx
    except ImportError as error:
        raise ImportError("reading the exported ONNX file needs onnx: pip install chatrex_ros[onnx]") from error
    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    if len(dims) != 4 or min(dims) <= 0:
        raise ValueError(f"{onnx_path} must have a static (1, 3, H, W) input, got {dims}; {EXPORT_HINT}")
    return dims, read_metadata({p.key: p.value for p in model.metadata_props})


def pin_fp32_layers(trt: Any, network: Any, patterns: tuple[str, ...]) -> dict[str, int]:
    """Constrain the layers :func:`.precision.select_fp32_layers` picks to fp32; returns the count per reason."""
    selection = select_fp32_layers(layer_graph(trt, network), patterns)
    pin_layers(trt, network, selection)
    counts: dict[str, int] = {}
    for reason in selection.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def builder_settings(precision: str) -> BuilderSettings:
    """The builder configuration of ``precision`` (TF32 off in both: fp32 layers compute in real fp32)."""
    return BuilderSettings(WORKSPACE_BYTES, OPTIMIZATION_LEVEL, False, RULE_VERSION if precision == "fp16" else "-")


def build_serialized_engine(
    trt: Any,
    logger: Any,
    onnx_path: Path,
    precision: str,
    patterns: tuple[str, ...],
    settings: BuilderSettings | None = None,
) -> bytes:
    """Parse the ONNX file and build a plan at ``precision`` with ``settings`` (see module docstring)."""
    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        raise RuntimeError(
            f"TensorRT {trt.__version__} has no weak typing (BuilderFlag.FP16); build an fp32 engine "
            "(precision='fp32') or use TensorRT 10.x for fp16"
        )
    settings = settings or builder_settings(precision)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    if not settings.tf32:
        # TF32 rounds fp32 matmul inputs to fp16's 10-bit mantissa: the pinned layers would gain nothing.
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)  # constraints are binding, not hints
        LOG.info("pinned to fp32 (layers per reason): %s", pin_fp32_layers(trt, network, patterns))
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log)")
    return bytes(plan)


def ensure_engine(
    onnx_path: str | Path,
    engine_cache_dir: str | Path,
    precision: str = DEFAULT_PRECISION,
    rebuild: bool = False,
    gpu_index: int = 0,
) -> CachedEngine:
    """The cached engine for this ONNX file, GPU, TensorRT version, precision and shape; built when needed."""
    onnx_file = require_file(onnx_path, "UPN ONNX model", EXPORT_HINT)
    import_tensorrt()
    shape, metadata = onnx_facts(onnx_file)
    return _ensure_engine(onnx_file, shape, metadata, engine_cache_dir, precision, rebuild, gpu_index)


def cached_engine(
    onnx_path: str | Path, engine_cache_dir: str | Path, precision: str = DEFAULT_PRECISION, gpu_index: int = 0
) -> CachedEngine:
    """The cache entry the node would load for these settings, built or not (``is_valid()`` says); builds nothing.

    For checks such as ``chatrex-ros doctor``; needs TensorRT and the GPU, since both are part of the key.
    """
    onnx_file = require_file(onnx_path, "UPN ONNX model", EXPORT_HINT)
    import_tensorrt()
    shape, _ = onnx_facts(onnx_file)
    return _engine_entry(onnx_file, shape, engine_cache_dir, precision, gpu_index)


def _engine_entry(
    onnx_file: Path, shape: tuple[int, ...], engine_cache_dir: str | Path, precision: str, gpu_index: int
) -> CachedEngine:
    """Check the settings, the driver and the GPU, make ``gpu_index`` current and key the engine."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if gpu_index < 0:
        raise ValueError(f"gpu_index must be >= 0, got {gpu_index}")
    trt, cudart = import_tensorrt(), import_cudart()
    require_cuda_driver(cudart)
    select_gpu(cudart, gpu_index)  # the builder builds for the current device
    gpu, capability = gpu_facts(cudart, gpu_index)
    key = EngineKey(
        gpu,
        capability,
        str(trt.__version__),
        precision,
        shape,
        file_sha256(onnx_file),
        builder_settings(precision),
        package_version(),
    )
    return cache_entry(engine_cache_dir, key)


def _ensure_engine(
    onnx_file: Path,
    shape: tuple[int, ...],
    metadata: dict[str, str],
    engine_cache_dir: str | Path,
    precision: str,
    rebuild: bool,
    gpu_index: int = 0,
) -> CachedEngine:
    """Key the engine; build it under the cache's lock unless it is cached or another process builds it."""
    entry = _engine_entry(onnx_file, shape, engine_cache_dir, precision, gpu_index)
    patterns = (
        tuple(json.loads(metadata["fp32_name_patterns"])) if "fp32_name_patterns" in metadata else FP32_NAME_PATTERNS
    )

    def build() -> bytes:
        LOG.info(
            "building TensorRT engine %s on GPU %d %s (takes minutes)", entry.engine_path, gpu_index, entry.key.gpu_name
        )
        trt = import_tensorrt()
        return build_serialized_engine(
            trt, trt.Logger(trt.Logger.WARNING), onnx_file, precision, patterns, entry.key.builder
        )

    ensure_built(entry, build, rebuild)
    return entry


class TensorRTUPNBackend:
    """Proposal backend running a cached TensorRT engine of the exported UPN on CUDA device ``gpu_index``."""

    name = "tensorrt"

    def __init__(
        self,
        onnx_path: str,
        engine_cache_dir: str,
        precision: str = DEFAULT_PRECISION,
        rebuild: bool = False,
        gpu_index: int = 0,
    ) -> None:
        self._trt, self._cudart = import_tensorrt(), import_cudart()
        onnx_file = require_file(onnx_path, "UPN ONNX model", EXPORT_HINT)
        shape, metadata = onnx_facts(onnx_file)
        self.gpu_index = gpu_index
        self.entry = _ensure_engine(onnx_file, shape, metadata, engine_cache_dir, precision, rebuild, gpu_index)
        self.resize = (int(metadata.get("resize_short", 800)), int(metadata.get("resize_max", 1333)))
        trt, cudart = self._trt, self._cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.entry.engine_path.read_bytes())
        if self._engine is None:
            raise RuntimeError(
                f"cannot load {self.entry.engine_path}; rebuild it: chatrex-ros build-engine --rebuild ..."
            )
        self._context = self._engine.create_execution_context()
        self._stream = _cuda_call(cudart, cudart.cudaStreamCreate())
        self._device: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self.input_name = ""
        for index in range(self._engine.num_io_tensors):
            tensor = self._engine.get_tensor_name(index)
            shape = tuple(self._engine.get_tensor_shape(tensor))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(tensor)))
            host = np.empty(shape, dtype=dtype)
            pointer = _cuda_call(cudart, cudart.cudaMalloc(host.nbytes))
            self._device[tensor], self._host[tensor] = int(pointer), host
            self._context.set_tensor_address(tensor, int(pointer))
            if self._engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT:
                self.input_name = tensor
        height, width = self._host[self.input_name].shape[-2:]
        self.input_hw = (int(height), int(width))

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        """Every query's box and score for an (H, W, 3) RGB image that resizes to the engine's input size."""
        prepared = prepare_image(image_rgb, *self.resize, input_hw=self.input_hw)
        boxes, logits = self.infer(prepared.pixels)
        return decode_outputs(boxes[0], logits[0], prepared.original_hw)

    def infer(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, 3, H, W) normalised pixels -> (boxes, logits); the only host<->device copies per frame."""
        cudart, stream = self._cudart, self._stream
        # The current device is per thread and frames may arrive on another thread than the one that loaded.
        _cuda_call(cudart, cudart.cudaSetDevice(self.gpu_index))
        pixels = np.ascontiguousarray(pixels, dtype=self._host[self.input_name].dtype)
        if pixels.shape != self._host[self.input_name].shape:
            raise ValueError(f"engine input is {self._host[self.input_name].shape}, got {pixels.shape}")
        host_to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        device_to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_call(
            cudart,
            cudart.cudaMemcpyAsync(
                self._device[self.input_name], pixels.ctypes.data, pixels.nbytes, host_to_device, stream
            ),
        )
        if not self._context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
        for tensor in (BOXES_NAME, LOGITS_NAME):
            host = self._host[tensor]
            _cuda_call(
                cudart,
                cudart.cudaMemcpyAsync(host.ctypes.data, self._device[tensor], host.nbytes, device_to_host, stream),
            )
        _cuda_call(cudart, cudart.cudaStreamSynchronize(stream))
        return self._host[BOXES_NAME].copy(), self._host[LOGITS_NAME].copy()

    def warmup(self) -> None:
        """One dummy frame straight into the engine (the first runs allocate and pick kernels)."""
        self.infer(np.zeros(self._host[self.input_name].shape, dtype=self._host[self.input_name].dtype))

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the object is collected)."""
        if getattr(self, "_device", None) or getattr(self, "_stream", None) is not None:
            self._cudart.cudaSetDevice(self.gpu_index)  # they live on that device
        for pointer in getattr(self, "_device", {}).values():
            self._cudart.cudaFree(pointer)
        getattr(self, "_device", {}).clear()
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        # Not contextlib.suppress: at interpreter shutdown module globals such as contextlib may already be gone.
        try:  # noqa: SIM105
            self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
