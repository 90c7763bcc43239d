"""Swin transformer backbone (detection variant: any input size, zero padding to whole windows).

Written from the architecture description in the reference config. Module and parameter names follow
the checkpoint's state-dict keys so ``upn_large.pth`` loads as is. Everything is vectorised over windows
(reshape/permute, no Python loops over windows or tokens) and the masks depend only on static shapes,
so the graph traces and exports with fixed input sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SHIFT_MASK_VALUE = -100.0
"""Added to attention logits between tokens from different regions of a shifted window."""


def relative_position_index(window: int) -> Tensor:
    """(w*w, w*w) int64: row-major token a, b -> (ya - yb + w - 1) * (2w - 1) + (xa - xb + w - 1)."""
    coords = torch.arange(window)
    ys = coords.repeat_interleave(window)
    xs = coords.repeat(window)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B * nW, window*window, C), windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shift_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    """(nW, N, N) additive mask for shifted windows on the padded (height, width) grid.

    Rows and columns fall into three bands [0, H-w), [H-w, H-s), [H-s, H); tokens of one window whose band
    labels differ must not attend to each other after the cyclic roll.
    """

    def bands(size: int) -> Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window).long() + (index >= size - shift).long()

    labels = (bands(height)[:, None] * 3 + bands(width)[None, :]).to(torch.float32)
    windows = window_partition(labels[None, :, :, None], window).squeeze(-1)  # (nW, N)
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, SHIFT_MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window with a learned relative position bias."""

    relative_position_index: Tensor  # a buffer (register_buffer)

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window = window
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> Tensor:
        """(heads, N, N) bias gathered from the table."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, windows: Tensor, shift_mask: Tensor | None) -> Tensor:
        """Windows (B * nW, N, C), shift_mask (nW, N, N) or None -> attended windows (B * nW, N, C)."""
        count, n, c = windows.shape
        qkv = self.qkv(windows).reshape(count, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        logits = q @ k.transpose(-2, -1) + self.position_bias()[None]
        if shift_mask is not None:
            per_image = shift_mask.shape[0]
            logits = logits.view(-1, per_image, self.heads, n, n) + shift_mask[None, :, None]
            logits = logits.view(count, self.heads, n, n)
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(count, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    """The blocks' feed-forward network: Linear -> GELU -> Linear back to ``dim``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """norm1 -> (zero-pad, roll) window attention -> residual; norm2 -> MLP -> residual."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, height: int, width: int, shift_mask: Tensor | None) -> Tensor:
        """Tokens (B, height * width, C) of a height x width grid -> (B, height * width, C)."""
        b, _, c = x.shape
        w = self.window
        shortcut = x
        x = self.norm1(x).view(b, height, width, c)
        # Padding comes after norm1, so padded tokens are exact zeros that still take part in attention.
        pad_h, pad_w = (-height) % w, (-width) % w
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        x = window_merge(self.attn(window_partition(x, w), shift_mask if self.shift else None), w, padded_h, padded_w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        if pad_h or pad_w:
            x = x[:, :height, :width, :]
        x = shortcut + x.reshape(b, height * width, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> concat (4C) -> LayerNorm -> Linear to 2C; odd sides are zero-padded first."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """Tokens (B, height * width, C) -> (B, ceil(height / 2) * ceil(width / 2), 2C)."""
        b, _, c = x.shape
        x = x.view(b, height, width, c)
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """Blocks alternating plain and shifted windows, then an optional patch merge."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self._mask_cache: dict[tuple[int, int, str], Tensor] = {}

    def shift_mask(self, height: int, width: int, device: torch.device) -> Tensor:
        """The stage's shift mask for its padded grid, cached per size (it only depends on shapes)."""
        padded = (-(-height // self.window) * self.window, -(-width // self.window) * self.window)
        key = (*padded, str(device))
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return shift_window_mask(*padded, self.window, self.shift, device)
        if key not in self._mask_cache:
            self._mask_cache[key] = shift_window_mask(*padded, self.window, self.shift, device)
        return self._mask_cache[key]

    def forward(self, x: Tensor, height: int, width: int) -> tuple[Tensor, Tensor | None]:
        """Tokens (B, height * width, C) -> (stage output, same shape; merged input of the next stage or None)."""
        mask = self.shift_mask(height, width, x.device) if len(self.blocks) > 1 else None
        for block in self.blocks:
            x = block(x, height, width, mask)
        return x, (self.downsample(x, height, width) if self.downsample is not None else None)


class PatchEmbed(nn.Module):
    """Zero-pad to a multiple of the patch size, 4x4/4 conv, LayerNorm over channels."""

    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, pixels: Tensor) -> tuple[Tensor, int, int]:
        """Pixels (B, C, H, W) -> (tokens (B, height * width, dim), height, width) of the patch grid."""
        _, _, h, w = pixels.shape
        pad_h, pad_w = (-h) % self.patch, (-w) % self.patch
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        x = self.proj(pixels)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), int(height), int(width)


class SwinTransformer(nn.Module):
    """Four stages; returns each stage output after its own LayerNorm ``norm{i}`` as (B, C_i, H_i, W_i)."""

    def __init__(
        self,
        embed_dim: int,
        depths: tuple[int, ...],
        num_heads: tuple[int, ...],
        window: int,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList(
            SwinStage(dims[i], depths[i], num_heads[i], window, mlp_ratio, downsample=i < len(depths) - 1)
            for i in range(len(depths))
        )
        self.num_features = dims
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def forward(self, pixels: Tensor) -> list[Tensor]:
        """Pixels (B, 3, H, W) -> one (B, C_i, H_i, W_i) feature map per stage, highest resolution first."""
        x, height, width = self.patch_embed(pixels)
        b = x.shape[0]
        outputs = []
        for i, stage in enumerate(self.layers):
            out, merged = stage(x, height, width)
            normed = getattr(self, f"norm{i}")(out)
            outputs.append(normed.view(b, height, width, -1).permute(0, 3, 1, 2).contiguous())
            if merged is not None:
                x, height, width = merged, (height + 1) // 2, (width + 1) // 2
        return outputs
