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
NO_CHECKPOINT_MESSAGE = (
    "the torch UPN backend needs a checkpoint and will not serve random-weight proposals: pass "
    "checkpoint:=/path/to/upn_large.pth with model_variant:=large (the default; model_variant:=tiny takes the "
    "tiny test checkpoint); upn_large.pth is in the 'upn-large' release of github.com/IDEA-Research/ChatRex "
    "(IDEA License 1.0, non-commercial). Benchmarks that want random weights pass random_weights=True"
)
"""One line (the node prints it as its start-up failure): what to pass, where the file comes from."""


def import_torch() -> Any:
    """The ``torch`` module, or an ImportError saying which extra to install."""
    try:
        import torch
    except ImportError as error:
        raise ImportError("the torch backend needs PyTorch: pip install chatrex_ros[torch]") from error
    return torch


class TorchUPNBackend:
    """Proposal backend running our UPN module.

    Reduced precision uses autocast (weights stay fp32); the proposal generation, top-k selection and the
    box head run in fp32 regardless (they hold +inf sentinels and inverse sigmoids).

    ``checkpoint`` None (or "" from a node parameter) is refused with a ValueError naming what to pass: a
    randomly initialised UPN still returns plausible-looking boxes, so a forgotten parameter would otherwise
    serve garbage proposals behind one log line. Benchmarks, whose cost does not depend on the weights, ask
    for them explicitly with ``random_weights=True``.
    """

    name = "torch"

    def __init__(
        self,
        checkpoint: str | None,
        variant: str | dict[str, Any] = "large",
        granularity: str = "fine",
        device: str = "cpu",
        dtype: str = "float32",
        *,
        random_weights: bool = False,
    ) -> None:
        # Argument checks first: a misconfigured node fails in a moment, before PyTorch loads.
        if checkpoint and random_weights:
            raise ValueError("give either checkpoint or random_weights=True, not both")
        if not checkpoint and not random_weights:
            raise ValueError(NO_CHECKPOINT_MESSAGE)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        torch = import_torch()
        from .checkpoint import load_upn_weights
        from .model import build_upn

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but this PyTorch has no usable CUDA")
        self.config: UPNConfig = resolve_config(variant)
        model = build_upn(self.config)
        model.transformer.prompt_vector(granularity)  # ValueError for an unknown granularity
        if checkpoint:
            load_upn_weights(model, checkpoint)
        else:
            LOG.warning("UPN torch backend with RANDOM weights (random_weights=True): for benchmarks only")
        self.model = model.to(self.device).eval()
        self.granularity = granularity
        self.dtype = dtype
        self._torch = torch

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        """Every query's box and score for an (H, W, 3) RGB image, in its pixel coordinates (DETR resize first)."""
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
