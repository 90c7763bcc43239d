"""Our own UPN (Universal Proposal Network): network, checkpoint loading, processing, export, backends.

Importing this package is cheap (numpy only): the network lives in :mod:`.model` and imports torch when
:func:`build_upn` is first called, so the ONNX Runtime and TensorRT backends run without torch.

    from chatrex_ros.models.upn import build_upn
    model = build_upn("large")                      # or "tiny", or a reference-schema config dict
    boxes, logits = model(pixels, prompt="fine")    # (B, Q, 4) cx cy w h in [0, 1], (B, Q, 1) pre-sigmoid
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import PRESETS, UPNConfig, resolve_config
from .processing import PreparedImage, decode_outputs, detr_resize_hw, prepare_image

if TYPE_CHECKING:
    import torch

    from .model import UPN

__all__ = [
    "PRESETS",
    "PreparedImage",
    "UPNConfig",
    "build_upn",
    "decode_outputs",
    "detr_resize_hw",
    "load_upn_weights",
    "prepare_image",
    "resolve_config",
]


def build_upn(variant: str | dict[str, Any] | UPNConfig = "large", *, device: str | torch.device | None = None) -> UPN:
    """Build the network (random weights); see :func:`chatrex_ros.models.upn.model.build_upn`."""
    from .model import build_upn as _build

    return _build(variant, device=device)


def load_upn_weights(model: UPN, path: str) -> UPN:
    """Load ``upn_large.pth`` (``["model"]``) or a ``.safetensors`` file strictly; see :mod:`.checkpoint`."""
    from .checkpoint import load_upn_weights as _load

    return _load(model, path)
