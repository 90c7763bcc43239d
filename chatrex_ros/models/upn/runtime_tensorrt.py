"""UPN on TensorRT: build (or load from the cache) an engine from the exported ONNX file and run it.

Targets the TensorRT 10 Python API (named I/O tensors, ``execute_async_v3``) with cuda-python for device
memory. Device buffers are allocated once; per frame only the pre-processed input goes host -> device and
the two outputs come back. fp16 engines use TensorRT's weak typing (``BuilderFlag.FP16``) with the layers
whose names match ``FP32_NAME_PATTERNS`` (proposal generation, top-k selection, box head) constrained to
fp32; TensorRT 11 removed weak typing, so there only fp32 engines are offered (a clear error says so).

NOT tested here (no GPU, no TensorRT): written against the TensorRT 10 Python API documentation; see
docs/models.md. The cache logic it relies on (:mod:`.engine_cache`) is tested.
"""

from __future__ import annotations

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
from .engine_cache import PRECISIONS, CachedEngine, EngineKey, cache_entry
from .processing import decode_outputs, prepare_image

LOG = logging.getLogger(__name__)
INSTALL_HINT = (
    "the tensorrt backend needs TensorRT 10 and cuda-python on a CUDA machine: pip install chatrex_ros[tensorrt]"
)
WORKSPACE_BYTES = 4 << 30


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


def gpu_name(cudart: Any, device: int = 0) -> str:
    """The CUDA device's model name (part of the engine cache key: a plan only runs on the GPU it was built for)."""
    properties = _cuda_call(cudart, cudart.cudaGetDeviceProperties(device))
    name = properties.name
    return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()


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


def pin_fp32_layers(trt: Any, network: Any, patterns: tuple[str, ...]) -> int:
    """Constrain float layers whose names contain a pattern to fp32; returns how many were pinned."""
    float_types = (trt.float32, trt.float16)
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if not any(p in layer.name for p in patterns):
            continue
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        if not outputs or any(o.dtype not in float_types for o in outputs):
            continue  # shape, index and boolean layers have no precision to choose
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            layer.set_output_type(i, trt.float32)
        pinned += 1
    return pinned


def build_serialized_engine(trt: Any, logger: Any, onnx_path: Path, precision: str, patterns: tuple[str, ...]) -> bytes:
    """Parse the ONNX file and build a plan at ``precision`` (see module docstring)."""
    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        raise RuntimeError(
            f"TensorRT {trt.__version__} has no weak typing (BuilderFlag.FP16); build an fp32 engine "
            "(precision='fp32') or use TensorRT 10.x for fp16"
        )
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        LOG.info("pinned %d layers to fp32", pin_fp32_layers(trt, network, patterns))
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: the accuracy reference engine
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log)")
    return bytes(plan)


def ensure_engine(
    onnx_path: str | Path, engine_cache_dir: str | Path, precision: str = "fp16", rebuild: bool = False
) -> CachedEngine:
    """The cached engine for this ONNX file, GPU, TensorRT version, precision and shape; built when needed."""
    onnx_file = require_file(onnx_path, "UPN ONNX model", EXPORT_HINT)
    import_tensorrt()
    shape, metadata = onnx_facts(onnx_file)
    return _ensure_engine(onnx_file, shape, metadata, engine_cache_dir, precision, rebuild)


def _ensure_engine(
    onnx_file: Path,
    shape: tuple[int, ...],
    metadata: dict[str, str],
    engine_cache_dir: str | Path,
    precision: str,
    rebuild: bool,
) -> CachedEngine:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    trt, cudart = import_tensorrt(), import_cudart()
    key = EngineKey(gpu_name(cudart), str(trt.__version__), precision, shape, file_sha256(onnx_file))
    entry = cache_entry(engine_cache_dir, key)
    if rebuild or not entry.is_valid():
        LOG.info("building TensorRT engine %s (takes minutes)", entry.engine_path)
        patterns = (
            tuple(json.loads(metadata["fp32_name_patterns"]))
            if "fp32_name_patterns" in metadata
            else FP32_NAME_PATTERNS
        )
        logger = trt.Logger(trt.Logger.WARNING)
        entry.store(build_serialized_engine(trt, logger, onnx_file, precision, patterns))
    return entry


class TensorRTUPNBackend:
    """Proposal backend running a cached TensorRT engine of the exported UPN."""

    name = "tensorrt"

    def __init__(self, onnx_path: str, engine_cache_dir: str, precision: str = "fp16", rebuild: bool = False) -> None:
        self._trt, self._cudart = import_tensorrt(), import_cudart()
        onnx_file = require_file(onnx_path, "UPN ONNX model", EXPORT_HINT)
        shape, metadata = onnx_facts(onnx_file)
        self.entry = _ensure_engine(onnx_file, shape, metadata, engine_cache_dir, precision, rebuild)
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
