"""Sine position encodings: per-pixel (feature maps) and per-box (decoder queries).

Both interleave sin (even channels) and cos (odd channels) over geometric frequencies
``temperature ** (2 * floor(k / 2) / F)``; the float32 arithmetic follows the reference order so the
values agree to the last bits where possible.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TWO_PI = 2 * math.pi


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> Tensor:
    k = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(angles: Tensor) -> Tensor:
    """(..., F) angles -> (..., F): channel k is sin for even k, cos for odd k."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_position_map(
    mask: Tensor | None,
    height: int,
    width: int,
    *,
    batch: int = 1,
    num_feats: int = 128,
    temperature: float = 20.0,
    device: torch.device | None = None,
) -> Tensor:
    """(B, 2F, H, W) encoding of normalised cumulative row/column positions of unpadded pixels.

    ``mask`` (B, H, W) bool is True on padding; None means no padding (then the map is the same for every
    image and depends on the shape only, which lets exporters fold it into a constant).
    """
    device = mask.device if mask is not None else device
    if mask is None:
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device)[None, :, None].expand(batch, height, width)
        x = torch.arange(1, width + 1, dtype=torch.float32, device=device)[None, None, :].expand(batch, height, width)
    else:
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)
        x = not_mask.cumsum(2, dtype=torch.float32)
    eps = 1e-6
    y = y / (y[:, -1:, :] + eps) * TWO_PI
    x = x / (x[:, :, -1:] + eps) * TWO_PI
    freqs = _frequencies(num_feats, temperature, y.device)
    pos_y = _interleave_sin_cos(y[..., None] / freqs)
    pos_x = _interleave_sin_cos(x[..., None] / freqs)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def sine_box_embedding(boxes: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """(..., 4) cx, cy, w, h in [0, 1] -> (..., 4F) with blocks ordered [cy, cx, w, h]."""
    freqs = _frequencies(num_feats, temperature, boxes.device)
    parts = [_interleave_sin_cos((boxes[..., i] * TWO_PI)[..., None] / freqs) for i in (1, 0, 2, 3)]
    return torch.cat(parts, dim=-1)
