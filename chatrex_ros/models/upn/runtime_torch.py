"""UPN in PyTorch as a proposal backend (cpu / cuda, fp32 or fp16 / bf16 autocast)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from chatrex_ros.core.types import RawProposals

from .config import UPNConfig, resolve_config
from .processing import decode_outputs, prepare_image

LOG = logging.getLogger(__name__)
DTYPES = ("float32", "float16", "bfloat16")


def import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise ImportError("the torch backend needs PyTorch: pip install chatrex_ros[torch]") from error
    return torch


class TorchUPNBackend:
    """Proposal backend running our UPN module.

    Reduced precision uses autocast (weights stay fp32); the proposal generation, top-k selection and the
    box head run in fp32 regardless (they hold +inf sentinels and inverse sigmoids). ``checkpoint`` None (or
    "" from a node parameter) means random weights, for benchmarks only: a warning is logged.
    """

    name = "torch"

    def __init__(
        self, checkpoint: str | None, variant: str | dict[str, Any] = "large", granularity: str = "fine",
        device: str = "cpu", dtype: str = "float32",
    ) -> None:
        torch = import_torch()
        from .checkpoint import load_upn_weights
        from .model import build_upn

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but this PyTorch has no usable CUDA")
        self.config: UPNConfig = resolve_config(variant)
        model = build_upn(self.config)
        model.transformer.prompt_vector(granularity)  # ValueError for an unknown granularity
        if checkpoint:
            load_upn_weights(model, checkpoint)
        else:
            LOG.warning("UPN torch backend without a checkpoint: RANDOM weights (benchmarks only)")
        self.model = model.to(self.device).eval()
        self.granularity = granularity
        self.dtype = dtype
        self._torch = torch

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        prepared = prepare_image(image_rgb, self.config.resize_short, self.config.resize_max)
        boxes, logits = self.infer(prepared.pixels)
        return decode_outputs(boxes[0], logits[0], prepared.original_hw)

    def infer(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, 3, H, W) normalised pixels -> raw (boxes, logits) as float32 numpy arrays."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device, non_blocking=True)
        reduced = self.dtype != "float32"
        autocast_dtype = getattr(torch, self.dtype) if reduced else torch.bfloat16  # unused when disabled
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=autocast_dtype, enabled=reduced):
            boxes, logits = self.model(x, self.granularity)
        return boxes.float().cpu().numpy(), logits.float().cpu().numpy()

    def warmup(self) -> None:
        """One dummy frame at the size a 640x480 camera gives (first runs allocate and pick kernels)."""
        self.propose(np.zeros((480, 640, 3), dtype=np.uint8))
