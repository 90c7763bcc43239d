"""Which layers of an fp16 TensorRT engine must stay fp32 (pure selection, plus a thin TensorRT adapter).

fp16 changes the UPN's answer in two places, so those run in fp32 whatever the engine precision:

* the query selection: ``TopK`` picks the 900 queries from per-token scores; computed in fp16, close scores
  tie or swap, which changes which queries are kept and their order (and so every box downstream);
* the multi-scale deformable attention: the reference implementation forces its sampling op to fp32
  (sampling locations are fractions of a feature map; fp16 moves them by a sizeable part of a pixel on the
  large levels).

The rule has three parts, each robust in its own way:

1. **name scopes** (``FP32_NAME_PATTERNS``, recorded in the ONNX metadata at export): the TorchScript exporter
   names nodes after module paths and TensorRT keeps them as layer names, so whole modules (proposal
   generation, query selection with its score head, the box head) are pinned by name;
2. **graph walk from every TopK**: the TopK layers themselves (their index output is int32, which a
   float-outputs-only rule would skip) and, walking backwards from their inputs through the arithmetic a score
   head is made of (elementwise, unary, reduce, matrix multiply, normalisation, shuffle, ...) for at most
   ``SCORE_DEPTH`` layers, the layers that compute their scores. It needs no names at all, so it still holds
   when an exporter renames or flattens scopes; the walk stops at anything else (a select, a cast, a gather, a
   constant), and the depth bound keeps it inside the head (the UPN's is 5 layers deep: squeeze <- matmul <-
   layer norm <- add <- matmul; a LayerNormalization decomposed by an older opset adds about 8);
3. **deformable attention by its GridSample layers**: ``sample_levels`` (:mod:`.deformable_attention`) is a
   plain function, so its ops (GridSample, the location arithmetic, the weighting, the level sum, the softmax of
   the weights) are exported directly in the attention module's scope
   (``/model/transformer/encoder/layers.0/self_attn/GridSample``), while its four projections sit one level
   deeper (``.../self_attn/value_proj/MatMul``) and may run fp16, as upstream lets them. The module is called
   ``self_attn`` in the encoder and ``cross_attn`` in the decoder, and the decoder's own ``self_attn`` is
   ordinary attention, so a fixed name list would be wrong; the scope is read off the GridSample layers
   instead, which only the deformable attention has. A GridSample layer without a scope is pinned alone.

Only layers with a float output are pinned (shape, index and boolean layers have no precision to choose; nor have
constants, which only hold weights), and only their float outputs get an output type. ``RULE_VERSION`` is part of
the engine cache key: change it with the rule, so engines built under an older rule are rebuilt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

RULE_VERSION = "2"
"""Version of this fp32 pinning rule (in the engine cache key). 1: name scopes only; 2: + TopK walk + GridSample."""

SCORE_DEPTH = 16
"""Most layers the walk goes back from a TopK input (see the module docstring for why 16)."""

TOPK = "TOPK"
GRID_SAMPLE = "GRID_SAMPLE"
SCORE_HEAD_KINDS = frozenset(
    {
        "ELEMENTWISE",
        "UNARY",
        "REDUCE",
        "MATRIX_MULTIPLY",
        "NORMALIZATION",
        "SHUFFLE",
        "SQUEEZE",
        "UNSQUEEZE",
        "ACTIVATION",
        "SCALE",
        "SOFTMAX",
        "IDENTITY",
    }
)
"""TensorRT layer kinds (``trt.LayerType`` names) a score head is built from; the TopK walk goes through these."""
NO_COMPUTE_KINDS = frozenset({"CONSTANT", "SHAPE"})
"""Layer kinds never pinned: they have no arithmetic whose precision could change the answer."""


@dataclass(frozen=True)
class LayerNode:
    """One network layer as the selection sees it: TensorRT-free, so tests build graphs by hand."""

    name: str
    kind: str  # trt.LayerType name: "TOPK", "ELEMENTWISE", ...
    inputs: tuple[str, ...]  # tensor names ("" for an unset optional input)
    outputs: tuple[str, ...]
    float_outputs: tuple[bool, ...]  # per output: float32/float16/bfloat16

    @property
    def has_float_output(self) -> bool:
        """Whether the layer computes floats, i.e. has a precision to choose."""
        return any(self.float_outputs)


def select_fp32_layers(
    layers: Sequence[LayerNode], name_patterns: Iterable[str], score_depth: int = SCORE_DEPTH
) -> dict[int, str]:
    """Indices of the layers to pin to fp32, each with the part of the rule that chose it (first part wins)."""
    chosen: dict[int, str] = {}
    for index in _topk_and_scores(layers, score_depth):
        chosen.setdefault(index, "top-k" if layers[index].kind == TOPK else "top-k scores")
    for index in _deformable_attention(layers):
        chosen.setdefault(index, "deformable attention")
    patterns = tuple(p for p in name_patterns if p)
    for index, layer in enumerate(layers):
        if any(p in layer.name for p in patterns):
            chosen.setdefault(index, "name scope")
    return {i: reason for i, reason in sorted(chosen.items()) if _has_precision(layers[i])}


def _has_precision(layer: LayerNode) -> bool:
    """A layer that computes floats; constants only hold weights (at their stored type) and compute nothing."""
    return layer.has_float_output and layer.kind not in NO_COMPUTE_KINDS


def _topk_and_scores(layers: Sequence[LayerNode], depth: int) -> set[int]:
    """Every TopK layer and the score-head layers within ``depth`` steps upstream of its inputs."""
    producer = {tensor: index for index, layer in enumerate(layers) for tensor in layer.outputs if tensor}
    found: set[int] = set()
    for index, layer in enumerate(layers):
        if layer.kind != TOPK:
            continue
        found.add(index)
        # Breadth first: a layer is reached by its shortest path, so the depth bound is the same in any order.
        seen = {index}
        frontier = deque((tensor, 1) for tensor in layer.inputs)
        while frontier:
            tensor, steps = frontier.popleft()
            source = producer.get(tensor)
            if source is None or source in seen or steps > depth or layers[source].kind not in SCORE_HEAD_KINDS:
                continue
            seen.add(source)
            frontier.extend((upstream, steps + 1) for upstream in layers[source].inputs)
        found |= seen
    return found


def _deformable_attention(layers: Sequence[LayerNode]) -> set[int]:
    """The GridSample layers and every layer directly (not in a sub-module) in a scope that holds one."""
    scopes = {_scope(layer.name) for layer in layers if layer.kind == GRID_SAMPLE}
    scopes.discard("")
    found = {index for index, layer in enumerate(layers) if layer.kind == GRID_SAMPLE}
    for index, layer in enumerate(layers):
        scope = _scope(layer.name)
        if scope in scopes and "/" not in layer.name[len(scope) :]:
            found.add(index)
    return found


def _scope(name: str) -> str:
    """``/a/b/GridSample_3`` -> ``/a/b/``; a name without a slash has no scope (``""``)."""
    head, slash, _ = name.rpartition("/")
    return head + slash if head else ""


# --- the thin part over a real trt.INetworkDefinition (and its test double) ---------------------------


def float_types(trt: Any) -> tuple[Any, ...]:
    """The float tensor types this TensorRT has (bfloat16 only in newer 10.x)."""
    return tuple(getattr(trt, name) for name in ("float32", "float16", "bfloat16") if hasattr(trt, name))


def layer_graph(trt: Any, network: Any) -> list[LayerNode]:
    """The network's layers as :class:`LayerNode` rows (tensors identified by their unique names)."""
    floats = float_types(trt)
    nodes = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        inputs = tuple(_tensor_name(layer.get_input(i)) for i in range(layer.num_inputs))
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        nodes.append(
            LayerNode(
                name=str(layer.name),
                kind=str(getattr(layer.type, "name", layer.type)),
                inputs=inputs,
                outputs=tuple(_tensor_name(t) for t in outputs),
                float_outputs=tuple(t is not None and t.dtype in floats for t in outputs),
            )
        )
    return nodes


def pin_layers(trt: Any, network: Any, selection: Iterable[int]) -> None:
    """Constrain the selected layers to fp32 compute and fp32 float outputs (needs OBEY_PRECISION_CONSTRAINTS)."""
    floats = float_types(trt)
    for index in selection:
        layer = network.get_layer(index)
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            output = layer.get_output(i)
            if output is not None and output.dtype in floats:
                layer.set_output_type(i, trt.float32)


def _tensor_name(tensor: Any) -> str:
    return "" if tensor is None else str(tensor.name)
