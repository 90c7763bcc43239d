"""UPN on ONNX Runtime (CPU or CUDA provider) from a file made by ``chatrex-ros export-upn``."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from chatrex_ros.core.types import RawProposals

from .artifacts import BOXES_NAME, EXPORT_HINT, INPUT_NAME, LOGITS_NAME, read_metadata, require_file
from .processing import decode_outputs, prepare_image

LOG = logging.getLogger(__name__)
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an ImportError saying which extra to install."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "the onnxruntime backend needs ONNX Runtime: pip install chatrex_ros[onnx] (onnxruntime-gpu for CUDA)"
        ) from error
    return onnxruntime


class OnnxRuntimeUPNBackend:
    """Proposal backend running an exported UPN graph; ``provider`` is the provider the session really got.

    ``device_id`` is the CUDA device the CUDA provider runs on (ignored by the others).
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: str, providers: list[str] | None = None, device_id: int = 0) -> None:
        ort = import_onnxruntime()
        path = require_file(onnx_path, "UPN ONNX model", EXPORT_HINT)
        available = list(ort.get_available_providers())
        wanted = list(providers) if providers else [p for p in PREFERRED_PROVIDERS if p in available]
        usable = [p for p in wanted if p in available]
        missing = [p for p in wanted if p not in available]
        if missing:
            LOG.warning("ONNX Runtime here lacks %s (has %s)", ", ".join(missing), ", ".join(available))
        if not usable:
            raise RuntimeError(
                f"none of the requested providers {wanted} is available (this onnxruntime has {available}); "
                "for CUDA: pip install onnxruntime-gpu"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device_id < 0:
            raise ValueError(f"device_id must be >= 0, got {device_id}")
        configured = [(p, {"device_id": device_id}) if p == "CUDAExecutionProvider" else p for p in usable]
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=configured)
        self.provider: str = self.session.get_providers()[0]
        metadata = read_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        self.prompt = metadata.get("prompt", "unknown")
        self.resize = (int(metadata.get("resize_short", 800)), int(metadata.get("resize_max", 1333)))
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
            raise ValueError(f"{path} must have a static (1, 3, H, W) input, got {shape}; {EXPORT_HINT}")
        self.input_hw: tuple[int, int] = (int(shape[2]), int(shape[3]))

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        """Every query's box and score for an (H, W, 3) RGB image that resizes to the exported input size."""
        prepared = prepare_image(image_rgb, *self.resize, input_hw=self.input_hw)
        boxes, logits = self.infer(prepared.pixels)
        return decode_outputs(boxes[0], logits[0], prepared.original_hw)

    def infer(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, 3, H, W) normalised pixels -> raw (boxes, logits)."""
        boxes, logits = self.session.run(
            [BOXES_NAME, LOGITS_NAME], {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.float32)}
        )
        return boxes, logits

    def warmup(self) -> None:
        """One dummy frame straight into the session (first runs allocate and, on CUDA, pick kernels)."""
        self.infer(np.zeros((1, 3, *self.input_hw), dtype=np.float32))
