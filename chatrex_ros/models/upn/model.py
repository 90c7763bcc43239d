"""The UPN network: Swin backbone -> 5-level projection -> deformable transformer -> boxes + prompt logits.

Attribute names reproduce the checkpoint's state-dict keys exactly, including the 2 x num_decoder_layers
alias names of the one shared box MLP (``transformer.decoder.bbox_embed.{i}`` and ``bbox_embed.{i}``):
one module object is registered under every name, so ``state_dict()`` lists all of them and
``load_state_dict(strict=True)`` accepts the official file.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import UPNConfig, resolve_config
from .position import sine_position_map
from .swin import SwinTransformer
from .transformer import MLP, FlatLevels, UPNTransformer

GROUP_NORM_GROUPS = 32


class KeyPath(nn.Module):
    """A parameterless holder whose only job is to reproduce a nesting level of the checkpoint keys."""

    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


def _projection(in_channels: int, d_model: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, d_model, kernel_size=kernel, stride=stride, padding=kernel // 2),
        nn.GroupNorm(GROUP_NORM_GROUPS, d_model),
    )


class UPN(nn.Module):
    """Class-agnostic two-stage deformable DETR whose scores are dot products with a granularity prompt."""

    def __init__(self, config: UPNConfig) -> None:
        super().__init__()
        self.config = config
        swin = SwinTransformer(
            config.embed_dim, config.depths, config.num_heads, config.window_size, config.mlp_ratio, config.patch_size
        )
        self.backbone = KeyPath(model=KeyPath(backbone=swin))
        self.transformer = UPNTransformer(
            d_model=config.d_model,
            heads=config.attention_heads,
            levels=config.feature_levels,
            points=config.sampling_points,
            num_queries=config.num_queries,
            encoder_layers=config.encoder_layers,
            decoder_layers=config.decoder_layers,
            encoder_ffn_dim=config.encoder_ffn_dim,
            decoder_ffn_dim=config.decoder_ffn_dim,
        )
        dims = config.stage_dims
        self.input_proj = nn.ModuleList(
            [_projection(c, config.d_model) for c in dims] + [_projection(dims[-1], config.d_model, kernel=3, stride=2)]
        )
        shared_box_head = MLP(config.d_model, config.d_model, 4, 3)
        self.bbox_embed = nn.ModuleList([shared_box_head] * config.decoder_layers)
        self.transformer.decoder.bbox_embed.extend([shared_box_head] * config.decoder_layers)

    @property
    def swin(self) -> SwinTransformer:
        """The Swin backbone, which the checkpoint's keys nest under ``backbone.model.backbone``."""
        return cast(SwinTransformer, self.get_submodule("backbone.model.backbone"))

    def forward(self, pixels: Tensor, prompt: str = "fine", mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Pixels (B, 3, H, W) normalised; mask (B, H, W) True on batch padding (None: no padding).

        Returns boxes (B, Q, 4) normalised cx, cy, w, h (relative to each image's unpadded size) and
        logits (B, Q, 1) before the sigmoid.
        """
        return self._run(pixels, prompt, mask, None)

    def trace(self, pixels: Tensor, prompt: str = "fine", mask: Tensor | None = None) -> dict[str, Any]:
        """The forward with its intermediates (backbone, flattening, encoder, selection, decoder) for debugging."""
        record: dict[str, Any] = {}
        boxes, logits = self._run(pixels, prompt, mask, record)
        record.update(pred_boxes=boxes, pred_logits=logits)
        return record

    def _run(
        self, pixels: Tensor, prompt: str, mask: Tensor | None, trace: dict[str, Any] | None
    ) -> tuple[Tensor, Tensor]:
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
        if mask is not None and (mask.shape != (pixels.shape[0], *pixels.shape[2:]) or mask.dtype != torch.bool):
            raise ValueError(
                f"mask must be bool (B, H, W) = {(pixels.shape[0], *pixels.shape[2:])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        self.transformer.prompt_vector(prompt)  # fail on a bad prompt before the expensive backbone
        features = self.swin(pixels)
        # input_proj has one more entry than there are Swin levels: zip pairs each level with its projection and
        # leaves out the last one, which makes the extra, coarsest level from the last Swin level.
        maps = [proj(f) for proj, f in zip(self.input_proj, features, strict=False)]
        maps.append(self.input_proj[-1](features[-1]))
        flat = self.flatten_levels(maps, mask)
        if trace is not None:
            trace.update({f"backbone_feat{i}": f for i, f in enumerate(features)})
            trace.update(
                src_flatten=flat.source,
                lvl_pos_embed=flat.position,
                level_shapes=flat.level_shapes,
                valid_ratios=flat.valid_ratios,
            )
        return self.transformer(flat, prompt, trace)

    def flatten_levels(self, maps: list[Tensor], mask: Tensor | None) -> FlatLevels:
        """Per-level masks, sine encodings + level embeddings, flattened highest resolution first."""
        b = maps[0].shape[0]
        sources, positions, masks, shapes = [], [], [], []
        for level, feature in enumerate(maps):
            h, w = int(feature.shape[-2]), int(feature.shape[-1])
            level_mask = None
            if mask is not None:
                level_mask = F.interpolate(mask[None].float(), size=(h, w)).to(torch.bool)[0]
                masks.append(level_mask)
            pos = sine_position_map(
                level_mask, h, w, batch=b, temperature=self.config.pos_temperature, device=feature.device
            )
            sources.append(feature.flatten(2).transpose(1, 2))
            positions.append(
                pos.flatten(2).transpose(1, 2).to(feature.dtype) + self.transformer.level_embed[level].view(1, 1, -1)
            )
            shapes.append((h, w))
        valid_ratios = valid_counts = padding = None
        if mask is not None:
            stacked = torch.stack(
                [torch.stack([(~m[:, 0, :]).sum(1), (~m[:, :, 0]).sum(1)], -1) for m in masks], 1
            ).float()  # (B, L, 2) unmasked columns, rows
            valid_counts = stacked
            sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=stacked.device)
            valid_ratios = stacked / sizes
            padding = torch.cat([m.flatten(1) for m in masks], 1)
        return FlatLevels(
            source=torch.cat(sources, 1),
            position=torch.cat(positions, 1),
            padding_mask=padding,
            level_shapes=shapes,
            valid_ratios=valid_ratios,
            valid_counts=valid_counts,
        )


def build_upn(variant: str | dict[str, Any] | UPNConfig = "large", *, device: str | torch.device | None = None) -> UPN:
    """A UPN in eval mode with freshly initialised weights (load a checkpoint with ``load_upn_weights``).

    ``device="meta"`` builds the structure without allocating memory (for shape checks of ``large``).
    """
    config = resolve_config(variant)
    if device is None:
        return UPN(config).eval()
    with torch.device(device):
        return UPN(config).eval()
