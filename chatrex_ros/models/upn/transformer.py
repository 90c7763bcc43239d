"""Deformable encoder, prompt-scored query selection and the box-refining decoder.

Layout is batch-first throughout: (B, tokens, 256). Names of modules and parameters follow the checkpoint.
The proposal generation and the box head (``proposals``, ``enc_output*``, ``enc_out_bbox_embed``,
``bbox_embed``) hold +inf sentinels and inverse sigmoids; they run in float32 even under autocast, and the
ONNX node names they produce (``/transformer/proposals/...``) let a TensorRT build keep them in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deformable_attention import MultiScaleDeformableAttention
from .position import sine_box_embedding

PROPOSAL_MIN, PROPOSAL_MAX = 0.01, 0.99
"""Encoder proposals with any coordinate outside this open interval are never selected as queries."""


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """log(x / (1 - x)) of x clamped to [0, 1], both terms kept >= ``eps`` so 0 and 1 stay finite."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """Linear layers with ReLU between them (``layers.{i}`` as in the checkpoint)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1)
        outs = [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


@dataclass
class FlatLevels:
    """The multi-scale features flattened into one token sequence, plus its geometry."""

    source: Tensor  # (B, S, D) projected features
    position: Tensor  # (B, S, D) sine encoding + level embedding
    padding_mask: Tensor | None  # (B, S) True on padding, None when nothing is padded
    level_shapes: list[tuple[int, int]]  # (H_l, W_l), highest resolution first
    valid_ratios: Tensor | None  # (B, L, 2) (x, y) unpadded fraction per level, None when unpadded
    valid_counts: Tensor | None  # (B, L, 2) (x, y) unpadded columns / rows per level (float), None when unpadded


class EncoderLayer(nn.Module):
    """Post-norm: deformable self-attention, then a ReLU feed-forward block."""

    def __init__(self, d_model: int, ffn_dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, levels, heads, points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference: Tensor, flat: FlatLevels) -> Tensor:
        """src, pos (B, S, D) tokens and their position encoding; reference (B, S, L, 2) points -> (B, S, D)."""
        attended = self.self_attn(src + pos, reference, src, flat.level_shapes, flat.padding_mask)
        src = self.norm1(src + attended)
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class Encoder(nn.Module):
    """A stack of :class:`EncoderLayer` over the flattened levels, each token referencing its own centre."""

    def __init__(self, num_layers: int, **layer_args: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(**layer_args) for _ in range(num_layers))

    def forward(self, flat: FlatLevels, token_centres: Tensor) -> Tensor:
        """token_centres (B, S, 2): each token's centre normalised by its level's unpadded size."""
        if flat.valid_ratios is None:
            reference = token_centres[:, :, None, :].expand(-1, -1, len(flat.level_shapes), -1)
        else:
            reference = token_centres[:, :, None, :] * flat.valid_ratios[:, None]
        src = flat.source
        for layer in self.layers:
            src = layer(src, flat.position, reference, flat)
        return src


class SelfAttention(nn.Module):
    """Multi-head attention with the packed parameters of ``nn.MultiheadAttention`` (batch-first)."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query_key: Tensor, value: Tensor) -> Tensor:
        """query_key (B, N, D) for queries and keys, value (B, N, D) -> (B, N, D)."""
        b, n, d = value.shape
        w_qk, w_v = self.in_proj_weight.split([2 * d, d])
        b_qk, b_v = self.in_proj_bias.split([2 * d, d])
        q, k = F.linear(query_key, w_qk, b_qk).split(d, dim=-1)
        v = F.linear(value, w_v, b_v)

        def heads(x: Tensor) -> Tensor:
            return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class DecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention into memory, feed-forward (all post-norm)."""

    def __init__(self, d_model: int, ffn_dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(d_model, levels, heads, points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = SelfAttention(d_model, heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor, flat: FlatLevels) -> Tensor:
        """tgt, query_pos (B, Q, D); reference (B, Q, L, 4) boxes; memory (B, S, D) -> updated queries (B, Q, D)."""
        tgt = self.norm2(tgt + self.self_attn(tgt + query_pos, tgt))
        tgt = self.norm1(
            tgt + self.cross_attn(tgt + query_pos, reference, memory, flat.level_shapes, flat.padding_mask)
        )
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class Decoder(nn.Module):
    """Layers refine the reference boxes one after another with the shared box MLP."""

    def __init__(self, num_layers: int, d_model: int, **layer_args: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model=d_model, **layer_args) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)  # 4 x 128 box sine features in
        # Present in the checkpoint; its contribution is multiplied by 0 upstream, so it is never run.
        self.ref_point_head_point = MLP(d_model, d_model, d_model, 2)
        self.bbox_embed: nn.ModuleList = nn.ModuleList()  # filled by UPN with one shared MLP
        self.box_update = BoxUpdate()

    def forward(
        self, tgt: Tensor, reference: Tensor, memory: Tensor, flat: FlatLevels, trace: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Tgt (B, Q, D) content queries, reference (B, Q, 4) sigmoid boxes.

        Returns (final-normed output of the last layer, the reference boxes that layer received).
        """
        hidden: list[Tensor] = []
        references = [reference]
        for i, layer in enumerate(self.layers):
            if flat.valid_ratios is None:
                level_boxes = reference[:, :, None, :].expand(-1, -1, len(flat.level_shapes), -1)
            else:
                level_boxes = reference[:, :, None, :] * torch.cat([flat.valid_ratios, flat.valid_ratios], -1)[:, None]
            query_pos = self.ref_point_head(sine_box_embedding(level_boxes[:, :, 0, :]))
            output = layer(tgt, query_pos, level_boxes, memory, flat)
            if i < len(self.layers) - 1 or trace is not None:
                # The next reference uses the raw (un-normed) layer output; no gradient flows through it.
                reference = self.box_update(self.bbox_embed[i], output, reference).detach()
                references.append(reference)
            if trace is not None:
                hidden.append(self.norm(output))
            tgt = output
        if trace is not None:
            trace["dec_hs"] = torch.stack(hidden)
            trace["dec_references"] = torch.stack(references)
        return self.norm(tgt), references[len(self.layers) - 1]


class BoxUpdate(nn.Module):
    """sigmoid(box_mlp(features) + inverse_sigmoid(reference)) in float32 (parameterless; the MLP is passed in).

    A module of its own so the exported nodes carry ``/box_update/`` in their names (kept fp32 in TensorRT).
    """

    def forward(self, box_mlp: nn.Module, features: Tensor, reference: Tensor) -> Tensor:
        """Refine reference (B, Q, 4) sigmoid boxes with features (B, Q, D); returns (B, Q, 4) float32 boxes."""
        with torch.autocast(features.device.type, enabled=False):
            return (box_mlp(features.float()) + inverse_sigmoid(reference.float())).sigmoid()


class OutputHead(nn.Module):
    """Final boxes from the last layer's normed output and its input reference; logits = hs . prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.box_update = BoxUpdate()

    def forward(self, box_mlp: nn.Module, hs: Tensor, reference: Tensor, prompt_vec: Tensor) -> tuple[Tensor, Tensor]:
        """From hs (B, Q, D), its reference (B, Q, 4), prompt_vec (1, D): float32 boxes (B, Q, 4), logits (B, Q, 1)."""
        with torch.autocast(hs.device.type, enabled=False):
            return self.box_update(box_mlp, hs, reference), hs.float() @ prompt_vec.float().t()


@dataclass
class Selection:
    """The top-k encoder tokens that seed the decoder, and the values worth inspecting."""

    refpoint_unsig: Tensor  # (B, Q, 4) unsigmoided initial reference boxes
    indices: Tensor  # (B, Q) token indices, decreasing logit
    logits: Tensor  # (B, S) selection logit of every token
    valid: Tensor  # (B, S) bool, False for padded tokens and out-of-range proposals


class EncoderProposals(nn.Module):
    """Fixed-size anchor boxes per token and the masked memory the query selection scores (no parameters)."""

    def forward(self, memory: Tensor, flat: FlatLevels, token_centres: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (masked memory, unsigmoided proposals with +inf sentinels, validity (B, S) bool)."""
        sizes = torch.cat(
            [
                torch.full((h * w,), 0.05 * 2.0**level, dtype=torch.float32, device=memory.device)
                for level, (h, w) in enumerate(flat.level_shapes)
            ]
        )
        b = memory.shape[0]
        proposals = torch.cat([token_centres, sizes[None, :, None].expand(b, -1, 2)], dim=-1)
        valid = ((proposals > PROPOSAL_MIN) & (proposals < PROPOSAL_MAX)).all(-1)
        if flat.padding_mask is not None:
            valid = valid & ~flat.padding_mask
        unsigmoided = torch.log(proposals / (1 - proposals)).masked_fill(~valid[..., None], float("inf"))
        return memory.float().masked_fill(~valid[..., None], 0.0), unsigmoided, valid


class QuerySelection(nn.Module):
    """Encoder proposals scored by the prompt; the top ``num_queries`` seed the decoder.

    Parameterless (the projection, norm and box MLP stay where the checkpoint keys put them and are passed
    in) and float32 even under autocast: the +inf sentinels and the top-k must not see fp16 rounding.
    """

    def __init__(self, num_queries: int) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.proposals = EncoderProposals()

    def forward(
        self,
        memory: Tensor,
        flat: FlatLevels,
        centres: Tensor,
        prompt_vec: Tensor,
        project: nn.Module,
        norm: nn.Module,
        box_mlp: nn.Module,
    ) -> Selection:
        """Keep the top ``num_queries`` tokens of memory (B, S, D) by prompt score; centres (B, S, 2) normalised."""
        with torch.autocast(memory.device.type, enabled=False):
            masked_memory, proposal_unsig, valid = self.proposals(memory, flat, centres)
            selection_memory = norm(project(masked_memory))
            logits = (selection_memory @ prompt_vec.float().t()).squeeze(-1)  # (B, S)
            indices = torch.topk(logits, self.num_queries, dim=1).indices
            dim = selection_memory.shape[-1]
            selected = torch.gather(selection_memory, 1, indices[..., None].expand(-1, -1, dim))
            selected_unsig = torch.gather(proposal_unsig, 1, indices[..., None].expand(-1, -1, 4))
            # The box MLP only needs the selected tokens: the same rows as running it on all S tokens.
            refpoint_unsig = (box_mlp(selected) + selected_unsig).detach()
        return Selection(refpoint_unsig=refpoint_unsig, indices=indices, logits=logits, valid=valid)


class UPNTransformer(nn.Module):
    """Encoder -> prompt-scored top-k token selection -> decoder with learned content queries."""

    def __init__(
        self,
        *,
        d_model: int,
        heads: int,
        levels: int,
        points: int,
        num_queries: int,
        encoder_layers: int,
        decoder_layers: int,
        encoder_ffn_dim: int,
        decoder_ffn_dim: int,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.level_embed = nn.Parameter(torch.zeros(levels, d_model))
        self.encoder = Encoder(
            encoder_layers, d_model=d_model, ffn_dim=encoder_ffn_dim, levels=levels, heads=heads, points=points
        )
        self.decoder = Decoder(
            decoder_layers, d_model, ffn_dim=decoder_ffn_dim, levels=levels, heads=heads, points=points
        )
        self.tgt_embed = nn.Embedding(num_queries, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.enc_out_bbox_embed = MLP(d_model, d_model, 4, 3)
        self.fine_grained_prompt = nn.Embedding(1, d_model)
        self.coarse_grained_prompt = nn.Embedding(1, d_model)
        self.query_selection = QuerySelection(num_queries)
        self.output_head = OutputHead()
        nn.init.normal_(self.level_embed)

    def prompt_vector(self, prompt: str) -> Tensor:
        """(1, D) prompt embedding; unlike upstream an unknown name is an error, not a zero vector."""
        if prompt in ("fine", "fine_grained", "fine_grained_prompt"):
            return self.fine_grained_prompt.weight
        if prompt in ("coarse", "coarse_grained", "coarse_grained_prompt"):
            return self.coarse_grained_prompt.weight
        raise ValueError(f"unknown UPN prompt {prompt!r}; use 'fine' (parts, anything) or 'coarse' (instances)")

    @staticmethod
    def token_centres(flat: FlatLevels, device: torch.device, *, exact_counts: bool) -> Tensor:
        """(B, S, 2) (x, y) = ((j + 0.5) / valid_W_l, (i + 0.5) / valid_H_l) for every token.

        With padding the reference divides by ``ratio * size`` for the encoder's reference points but by
        the integer count for the proposals; the two differ in the last float bit, which can flip a
        proposal across the 0.01 validity boundary, so both forms are kept.
        """
        parts = []
        b = flat.source.shape[0]
        for level, (h, w) in enumerate(flat.level_shapes):
            ys = torch.arange(h, dtype=torch.float32, device=device) + 0.5
            xs = torch.arange(w, dtype=torch.float32, device=device) + 0.5
            if flat.valid_ratios is None or flat.valid_counts is None:
                grid_x, grid_y = (xs / w)[None, None, :].expand(1, h, w), (ys / h)[None, :, None].expand(1, h, w)
            else:
                if exact_counts:
                    valid_w, valid_h = flat.valid_counts[:, level, 0], flat.valid_counts[:, level, 1]
                else:
                    valid_w, valid_h = flat.valid_ratios[:, level, 0] * w, flat.valid_ratios[:, level, 1] * h
                grid_x = (xs[None, None, :] / valid_w[:, None, None]).expand(b, h, w)
                grid_y = (ys[None, :, None] / valid_h[:, None, None]).expand(b, h, w)
            parts.append(torch.stack([grid_x, grid_y], -1).reshape(grid_x.shape[0], h * w, 2))
        return torch.cat(parts, dim=1).expand(b, -1, -1)

    def forward(self, flat: FlatLevels, prompt: str, trace: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Returns (boxes (B, Q, 4) sigmoid cx cy w h, logits (B, Q, 1))."""
        prompt_vec = self.prompt_vector(prompt)
        device = flat.source.device
        centres = self.token_centres(flat, device, exact_counts=False)
        memory = self.encoder(flat, centres)

        if flat.valid_counts is not None:
            centres = self.token_centres(flat, device, exact_counts=True)
        selection = self.query_selection(
            memory, flat, centres, prompt_vec, self.enc_output, self.enc_output_norm, self.enc_out_bbox_embed
        )
        if trace is not None:
            trace.update(
                memory=memory,
                enc_proposal_valid=selection.valid,
                enc_logits=selection.logits,
                enc_topk_indices=selection.indices,
                dec_init_refpoint_unsig=selection.refpoint_unsig,
            )

        tgt = self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)
        hs, last_reference = self.decoder(tgt, selection.refpoint_unsig.sigmoid(), memory, flat, trace)
        return self.output_head(self.decoder.bbox_embed[-1], hs, last_reference, prompt_vec)
