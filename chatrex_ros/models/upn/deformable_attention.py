"""Multi-scale deformable attention in plain PyTorch: one bilinear ``grid_sample`` per feature level.

No compiled extension: it runs on any device, traces, and exports to ONNX (GridSample, opset >= 16).
Channel layouts of the projections follow the checkpoint: sampling offsets are ordered
(head, level, point, xy) and attention weights (head, level, point).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sample_levels(value: Tensor, level_shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """Weighted bilinear samples of every level, summed over levels and points.

    value (B, S, M, Dh) flattened multi-level values; locations (B, Q, M, L, P, 2) in [0, 1] (x, y),
    align_corners=False convention, zeros outside the map; weights (B, Q, M, L, P).
    Returns (B, Q, M * Dh).
    """
    b, _, heads, head_dim = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    grids = (2 * locations - 1).transpose(1, 2).flatten(0, 1)  # (B*M, Q, L, P, 2)
    weights = weights.transpose(1, 2).reshape(b * heads, 1, queries, levels, points)
    sizes = [h * w for h, w in level_shapes]
    output = None
    for level, (part, (h, w)) in enumerate(zip(value.split(sizes, dim=1), level_shapes, strict=True)):
        level_value = part.flatten(2).transpose(1, 2).reshape(b * heads, head_dim, h, w)
        sampled = F.grid_sample(
            level_value, grids[:, :, level], mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B*M, Dh, Q, P)
        # Weighting level by level avoids materialising all levels' samples at once (L times less memory).
        contribution = (sampled * weights[:, :, :, level]).sum(-1)
        output = contribution if output is None else output + contribution
    assert output is not None
    return output.view(b, heads * head_dim, queries).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``points`` learned offsets around its reference on every level."""

    def __init__(self, d_model: int = 256, levels: int = 5, heads: int = 8, points: int = 4) -> None:
        super().__init__()
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(d_model, heads * levels * points * 2)
        self.attention_weights = nn.Linear(d_model, heads * levels * points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: Tensor,
        reference: Tensor,
        source: Tensor,
        level_shapes: list[tuple[int, int]],
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from query (B, Q, D) into the flattened levels of source (B, S, D); returns (B, Q, D).

        reference (B, Q, L, 2) points or (B, Q, L, 4) boxes, normalised; padding_mask (B, S) True on padding (or
        None).
        """
        b, queries, d = query.shape
        value = self.value_proj(source)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(b, source.shape[1], self.heads, d // self.heads)
        offsets = self.sampling_offsets(query).view(b, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, queries, self.heads, self.levels, self.points)
        if reference.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (W_l, H_l).
            normaliser = torch.tensor([[w, h] for h, w in level_shapes], dtype=query.dtype, device=query.device)
            locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        elif reference.shape[-1] == 4:
            # Offsets are fractions of half the reference box size.
            locations = (
                reference[:, :, None, :, None, :2] + offsets / self.points * reference[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference must end in 2 (points) or 4 (boxes), got shape {tuple(reference.shape)}")
        return self.output_proj(sample_levels(value, level_shapes, locations, weights))
