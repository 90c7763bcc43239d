"""fp16 TensorRT engines: which layers stay fp32, the builder flags, the shared default precision, the CUDA driver
check, the GPU index and the engine cache's key and lock.

TensorRT and cuda-python cannot be installed here (no GPU): the build and start-up logic runs against test doubles
of the ``tensorrt`` module and of cuda-python's runtime bindings, which record what the code asks of them. The fp32
selection itself is a pure function, tested on hand-built layer graphs and on the graph of a real UPN export.
"""

from __future__ import annotations

import argparse
import enum
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chatrex_ros.models.settings import backend_precision, proposal_backend_kwargs
from chatrex_ros.models.upn import engine_cache, runtime_tensorrt
from chatrex_ros.models.upn.artifacts import FP32_NAME_PATTERNS
from chatrex_ros.models.upn.engine_cache import BuilderSettings, EngineKey, cache_entry, ensure_built
from chatrex_ros.models.upn.precision import LayerNode, select_fp32_layers
from chatrex_ros.node_parameters import PROPOSAL_NODE, ProposalNodeParams, resolved
from chatrex_ros.parameters import resolve

ROOT = Path(__file__).resolve().parent.parent


def node(name: str, kind: str, inputs: tuple[str, ...] = (), floats: tuple[bool, ...] = (True,)) -> LayerNode:
    """A layer whose outputs are named ``<name>:<i>``."""
    return LayerNode(name, kind, inputs, tuple(f"{name}:{i}" for i in range(len(floats))), floats)


def chosen(layers: list[LayerNode], patterns: tuple[str, ...] = (), depth: int = 16) -> dict[str, str]:
    return {layers[i].name: reason for i, reason in select_fp32_layers(layers, patterns, depth).items()}


# --- the selection (pure) -------------------------------------------------------------------------------------


def score_head_graph() -> list[LayerNode]:
    """A query selection with no scope names: memory -> mask -> proj -> bias -> norm -> score -> squeeze -> TopK."""
    return [
        node("encoder_out", "ELEMENTWISE"),
        node("mask", "SELECT", ("encoder_out:0",)),
        node("proj", "MATRIX_MULTIPLY", ("mask:0", "proj_weight:0")),
        node("proj_weight", "CONSTANT"),
        node("bias", "ELEMENTWISE", ("proj:0",)),
        node("norm", "NORMALIZATION", ("bias:0",)),
        node("prompt", "CONSTANT"),
        node("score", "MATRIX_MULTIPLY", ("norm:0", "prompt:0")),
        node("squeeze", "SHUFFLE", ("score:0",)),
        node("k", "SHAPE", (), (False,)),
        node("topk", "TOPK", ("squeeze:0", "k:0"), (True, False)),  # values, int32 indices
        node("gather", "GATHER", ("mask:0", "topk:1")),
        node("after", "ELEMENTWISE", ("gather:0",)),
    ]


def test_topk_and_the_score_head_behind_it_are_pinned_without_any_names():
    result = chosen(score_head_graph())
    assert result == {
        "proj": "top-k scores",
        "bias": "top-k scores",
        "norm": "top-k scores",
        "score": "top-k scores",
        "squeeze": "top-k scores",
        "topk": "top-k",
    }  # the walk stops at the select; constants, the gather and what follows the selection are left alone


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_the_score_walk_goes_back_at_most_depth_layers(depth):
    chain = [node("l0", "ELEMENTWISE")]
    chain += [node(f"l{i}", "ELEMENTWISE", (f"l{i - 1}:0",)) for i in range(1, 10)]
    chain.append(node("topk", "TOPK", ("l9:0",), (True, False)))
    result = chosen(chain, depth=depth)
    assert set(result) == {"topk", *(f"l{9 - i}" for i in range(depth))}


def test_the_depth_bound_counts_the_shortest_path():
    """``x`` is 2 steps from the TopK directly and 3 through a detour: its producer ``y`` is 3 steps away, in reach
    at depth 3 whichever branch a walk happens to take first."""
    layers = [
        node("y", "ELEMENTWISE"),
        node("x", "ELEMENTWISE", ("y:0",)),
        node("detour", "ELEMENTWISE", ("x:0",)),
        node("join", "ELEMENTWISE", ("x:0", "detour:0")),
        node("topk", "TOPK", ("join:0",), (True, False)),
    ]
    assert set(chosen(layers, depth=3)) == {"topk", "join", "detour", "x", "y"}
    assert set(chosen(layers, depth=2)) == {"topk", "join", "detour", "x"}


def test_deformable_attention_scope_is_read_off_its_grid_sample_layers():
    enc, dec = "/model/transformer/encoder/layers.0", "/model/transformer/decoder/layers.0"
    layers = [
        node(f"{enc}/self_attn/value_proj/MatMul", "MATRIX_MULTIPLY"),
        node(f"{enc}/self_attn/sampling_offsets/MatMul", "MATRIX_MULTIPLY"),
        node(f"{enc}/self_attn/Softmax", "SOFTMAX"),
        node(f"{enc}/self_attn/Add", "ELEMENTWISE"),
        node(f"{enc}/self_attn/GridSample", "GRID_SAMPLE"),
        node(f"{enc}/self_attn/GridSample_1", "GRID_SAMPLE"),
        node(f"{enc}/self_attn/ReduceSum_1", "REDUCE"),
        node(f"{enc}/self_attn/Constant_6", "CONSTANT"),
        node(f"{enc}/self_attn/Shape", "SHAPE", (), (False,)),
        node(f"{enc}/self_attn/output_proj/MatMul", "MATRIX_MULTIPLY"),
        node(f"{enc}/linear1/MatMul", "MATRIX_MULTIPLY"),
        node(f"{dec}/self_attn/MatMul", "MATRIX_MULTIPLY"),  # the decoder's ordinary attention
        node(f"{dec}/self_attn/Softmax", "SOFTMAX"),
        node(f"{dec}/cross_attn/Mul_3", "ELEMENTWISE"),
        node(f"{dec}/cross_attn/GridSample", "GRID_SAMPLE"),
        node("GridSample_unscoped", "GRID_SAMPLE"),
        node("Mul_unscoped", "ELEMENTWISE"),
    ]
    assert set(chosen(layers)) == {
        f"{enc}/self_attn/Softmax",
        f"{enc}/self_attn/Add",
        f"{enc}/self_attn/GridSample",
        f"{enc}/self_attn/GridSample_1",
        f"{enc}/self_attn/ReduceSum_1",
        f"{dec}/cross_attn/Mul_3",
        f"{dec}/cross_attn/GridSample",
        "GridSample_unscoped",
    }
    assert set(chosen(layers).values()) == {"deformable attention"}


def test_name_scopes_are_kept_and_layers_without_float_outputs_are_skipped():
    layers = [
        node("/model/transformer/query_selection/proposals/Log", "UNARY"),
        node("/model/transformer/query_selection/proposals/Greater", "ELEMENTWISE", (), (False,)),
        node("/model/transformer/decoder/box_update/Sigmoid", "ACTIVATION"),
        node("/model/bbox_embed.5/layers.0/MatMul", "MATRIX_MULTIPLY"),
        node("/model/transformer/encoder/layers.0/linear1/MatMul", "MATRIX_MULTIPLY"),
        node("/model/transformer/query_selection/TopK", "TOPK", (), (True, False)),
    ]
    assert chosen(layers, FP32_NAME_PATTERNS) == {
        "/model/transformer/query_selection/proposals/Log": "name scope",
        "/model/transformer/decoder/box_update/Sigmoid": "name scope",
        "/model/bbox_embed.5/layers.0/MatMul": "name scope",
        "/model/transformer/query_selection/TopK": "top-k",  # in a scope too: the first reason is reported
    }
    assert chosen(layers, ()) == {"/model/transformer/query_selection/TopK": "top-k"}


# --- the selection on a real export of the tiny UPN ----------------------------------------------------------

ONNX_TO_TENSORRT = {
    "TopK": "TOPK",
    "GridSample": "GRID_SAMPLE",
    "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY",
    "LayerNormalization": "NORMALIZATION",
    "Softmax": "SOFTMAX",
    "Where": "SELECT",
    "Cast": "CAST",
    "Gather": "GATHER",
    "GatherElements": "GATHER",
    "Constant": "CONSTANT",
    "Shape": "SHAPE",
    "Concat": "CONCATENATION",
    "Slice": "SLICE",
    "Conv": "CONVOLUTION",
    **dict.fromkeys(("Add", "Sub", "Mul", "Div", "Pow", "Greater", "Less", "Equal", "And"), "ELEMENTWISE"),
    **dict.fromkeys(("Squeeze", "Unsqueeze", "Reshape", "Transpose", "Flatten"), "SHUFFLE"),
    **dict.fromkeys(("Relu", "Sigmoid"), "ACTIVATION"),
    **dict.fromkeys(("ReduceSum", "ReduceMean"), "REDUCE"),
    **dict.fromkeys(("Sqrt", "Log", "Exp", "Not", "Sin", "Cos", "Erf"), "UNARY"),
}
"""How the TensorRT ONNX parser turns the UPN's ops into layers (the kinds the selection looks at)."""


@pytest.fixture(scope="module")
def exported_graph(tmp_path_factory) -> list[LayerNode]:
    """The tiny UPN exported at 64x96 as TensorRT would see its layers (names kept, types from shape inference)."""
    pytest.importorskip("torch", reason="the export needs the [torch] extra")
    onnx = pytest.importorskip("onnx", reason="the export needs the [onnx] extra")
    from chatrex_ros.models.upn.checkpoint import load_upn_weights
    from chatrex_ros.models.upn.config import resolve_config
    from chatrex_ros.models.upn.export import export_onnx
    from chatrex_ros.models.upn.model import build_upn

    model = load_upn_weights(
        build_upn(resolve_config("tiny")), str(ROOT / "test" / "data" / "upn" / "tiny_state_dict.safetensors")
    )
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", (64, 96), "coarse")
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    values = [*graph.value_info, *graph.output, *graph.input]
    dtypes = {v.name: v.type.tensor_type.elem_type for v in values}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    return [
        LayerNode(
            n.name,
            ONNX_TO_TENSORRT.get(n.op_type, n.op_type.upper()),
            tuple(n.input),
            tuple(n.output),
            tuple(dtypes.get(o) in floats for o in n.output),
        )
        for n in graph.node
    ]


def test_the_exported_upn_pins_its_top_k_scores_and_deformable_attention(exported_graph):
    selection = select_fp32_layers(exported_graph, FP32_NAME_PATTERNS)
    by_reason: dict[str, set[str]] = {}
    for index, reason in selection.items():
        by_reason.setdefault(reason, set()).add(exported_graph[index].name)
    topk = [layer.name for layer in exported_graph if layer.kind == "TOPK"]
    assert topk and by_reason["top-k"] == set(topk)
    scores = by_reason["top-k scores"]
    assert {"enc_output/MatMul", "enc_output_norm/LayerNormalization"} <= {name.split("/", 4)[-1] for name in scores}
    assert not [name for name in scores if "/encoder/" in name], "the walk must stop at the query selection"
    grid_samples = {layer.name for layer in exported_graph if layer.kind == "GRID_SAMPLE"}
    deformable = by_reason["deformable attention"]
    assert grid_samples and grid_samples <= deformable
    scopes = {name.rpartition("/")[0] for name in grid_samples}
    assert {name.rpartition("/")[0] for name in deformable} == scopes  # nothing outside the attention modules
    projections = ("/value_proj/", "/output_proj/", "/sampling_offsets/", "/attention_weights/")
    assert not [name for name in deformable if any(p in name for p in projections)]
    assert not [name for name in selection_names(exported_graph, selection) if "/decoder/layers.0/self_attn/" in name]
    assert any("/Softmax" in name for name in deformable), "the attention weights' softmax runs fp32 as upstream"


def selection_names(layers: list[LayerNode], selection: dict[int, str]) -> list[str]:
    return [layers[i].name for i in selection]


# --- test doubles of the tensorrt module and of cuda-python's runtime bindings -----------------------------


class LayerType(enum.Enum):
    """Test double of ``trt.LayerType`` (members have ``.name``, as the real enum's do)."""

    TOPK = 1
    ELEMENTWISE = 2
    MATRIX_MULTIPLY = 3
    SHUFFLE = 4
    GRID_SAMPLE = 5
    SELECT = 6
    CONSTANT = 7


class TensorDouble:
    """Test double of ``trt.ITensor``: a name and a dtype."""

    def __init__(self, name: str, dtype: str) -> None:
        self.name, self.dtype = name, dtype


class LayerDouble:
    """Test double of ``trt.ILayer``: records the precision and the output types it is given."""

    def __init__(self, name: str, kind: LayerType, inputs: list[TensorDouble], outputs: list[TensorDouble]) -> None:
        self.name, self.type = name, kind
        self._inputs, self._outputs = inputs, outputs
        self.num_inputs, self.num_outputs = len(inputs), len(outputs)
        self.precision: str | None = None
        self.output_types: dict[int, str] = {}

    def get_input(self, index: int) -> TensorDouble:
        return self._inputs[index]

    def get_output(self, index: int) -> TensorDouble:
        return self._outputs[index]

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


class NetworkDouble:
    """Test double of ``trt.INetworkDefinition``."""

    def __init__(self, layers: list[LayerDouble]) -> None:
        self.layers = layers
        self.num_layers = len(layers)

    def get_layer(self, index: int) -> LayerDouble:
        return self.layers[index]


def network_double() -> NetworkDouble:
    """memory -> select -> matmul -> shuffle -> TopK (values + int32 indices), and a GridSample elsewhere."""
    t = {name: TensorDouble(name, "float32") for name in ("memory", "masked", "scores", "squeezed", "values", "grid")}
    t["indices"], t["weight"] = TensorDouble("indices", "int32"), TensorDouble("weight", "float32")
    return NetworkDouble(
        [
            LayerDouble("select", LayerType.SELECT, [t["memory"]], [t["masked"]]),
            LayerDouble("weight", LayerType.CONSTANT, [], [t["weight"]]),
            LayerDouble("score", LayerType.MATRIX_MULTIPLY, [t["masked"], t["weight"]], [t["scores"]]),
            LayerDouble("squeeze", LayerType.SHUFFLE, [t["scores"]], [t["squeezed"]]),
            LayerDouble("topk", LayerType.TOPK, [t["squeezed"]], [t["values"], t["indices"]]),
            LayerDouble("/attn/GridSample", LayerType.GRID_SAMPLE, [t["memory"]], [t["grid"]]),
        ]
    )


class TensorRTDouble:
    """Test double of the ``tensorrt`` module (TensorRT 10 API surface the build uses); records the build."""

    __version__ = "10.3.0"
    float32, float16, int32 = "float32", "float16", "int32"
    LayerType = LayerType

    class BuilderFlag:
        FP16, TF32, OBEY_PRECISION_CONSTRAINTS = "FP16", "TF32", "OBEY_PRECISION_CONSTRAINTS"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity: str) -> None:
            self.severity = severity

    def __init__(self, network: NetworkDouble | None = None) -> None:
        self.network = network or network_double()
        self.builds: list[dict[str, Any]] = []
        self.Builder = self._builder
        self.OnnxParser = lambda network, logger: SimpleNamespace(parse_from_file=lambda path: True, num_errors=0)

    def _builder(self, logger: Any) -> Any:
        double = self

        class Config:
            def __init__(self) -> None:
                self.flags: set[str] = {"TF32"}  # TensorRT's default
                self.pools: dict[str, int] = {}
                self.builder_optimization_level = 3

            def set_flag(self, flag: str) -> None:
                self.flags.add(flag)

            def clear_flag(self, flag: str) -> None:
                self.flags.discard(flag)

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                self.pools[pool] = size

        def build(network: NetworkDouble, config: Config) -> bytes:
            pinned = {layer.name: (layer.precision, dict(layer.output_types)) for layer in network.layers}
            double.builds.append({"flags": set(config.flags), "pools": config.pools, "pinned": pinned})
            double.builds[-1]["level"] = config.builder_optimization_level
            return f"plan {len(double.builds)}".encode()

        return SimpleNamespace(
            create_network=lambda flags: double.network,
            create_builder_config=Config,
            build_serialized_network=build,
        )


class CudartDouble:
    """Test double of cuda-python's ``cuda.bindings.runtime``: a driver version and some GPUs."""

    class cudaError_t(enum.Enum):  # noqa: N801  (the real name)
        cudaSuccess = 0
        cudaErrorInvalidDevice = 101

    def __init__(self, driver_version: int = 12040, gpus: tuple[tuple[str, int, int], ...] = ()) -> None:
        self.driver_version = driver_version
        self.gpus = gpus or (("NVIDIA RTX 4090", 8, 9), ("NVIDIA H100 80GB HBM3", 9, 0))
        self.current: list[int] = []

    def cudaDriverGetVersion(self) -> tuple[Any, int]:  # noqa: N802
        return self.cudaError_t.cudaSuccess, self.driver_version

    def cudaGetDeviceCount(self) -> tuple[Any, int]:  # noqa: N802
        return self.cudaError_t.cudaSuccess, len(self.gpus)

    def cudaSetDevice(self, index: int) -> tuple[Any]:  # noqa: N802
        if not 0 <= index < len(self.gpus):
            return (self.cudaError_t.cudaErrorInvalidDevice,)
        self.current.append(index)
        return (self.cudaError_t.cudaSuccess,)

    def cudaGetDeviceProperties(self, index: int) -> tuple[Any, Any]:  # noqa: N802
        name, major, minor = self.gpus[index]
        return self.cudaError_t.cudaSuccess, SimpleNamespace(name=name.encode() + b"\x00" * 4, major=major, minor=minor)


# --- the thin TensorRT part, against the doubles --------------------------------------------------------------


def test_pinning_sets_fp32_precision_and_fp32_types_on_float_outputs_only():
    trt = TensorRTDouble()
    counts = runtime_tensorrt.pin_fp32_layers(trt, trt.network, ())
    layers = {layer.name: layer for layer in trt.network.layers}
    assert counts == {"top-k": 1, "top-k scores": 2, "deformable attention": 1}
    assert layers["topk"].precision == "float32" and layers["topk"].output_types == {0: "float32"}  # not the indices
    assert layers["score"].precision == "float32" and layers["squeeze"].output_types == {0: "float32"}
    assert layers["/attn/GridSample"].precision == "float32"
    assert layers["select"].precision is None and layers["weight"].precision is None


def test_fp16_build_obeys_the_constraints_keeps_tf32_off_and_pins_before_building(tmp_path):
    trt = TensorRTDouble()
    plan = runtime_tensorrt.build_serialized_engine(trt, None, tmp_path / "upn.onnx", "fp16", FP32_NAME_PATTERNS)
    (build,) = trt.builds
    assert plan == b"plan 1"
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= build["flags"] and "TF32" not in build["flags"]
    assert build["pools"] == {"WORKSPACE": runtime_tensorrt.WORKSPACE_BYTES}
    assert build["level"] == runtime_tensorrt.OPTIMIZATION_LEVEL
    assert build["pinned"]["topk"] == ("float32", {0: "float32"})


def test_fp32_build_pins_nothing_and_has_no_fp16(tmp_path):
    trt = TensorRTDouble()
    runtime_tensorrt.build_serialized_engine(trt, None, tmp_path / "upn.onnx", "fp32", FP32_NAME_PATTERNS)
    (build,) = trt.builds
    assert build["flags"] == set() and all(precision is None for precision, _ in build["pinned"].values())


@pytest.fixture
def doubles(monkeypatch) -> tuple[TensorRTDouble, CudartDouble]:
    trt, cudart = TensorRTDouble(), CudartDouble()
    monkeypatch.setattr(runtime_tensorrt, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(runtime_tensorrt, "import_cudart", lambda: cudart)
    monkeypatch.setattr(runtime_tensorrt, "cuda_python_version", lambda: "12.6.0")
    monkeypatch.setattr(runtime_tensorrt, "onnx_facts", lambda path: ((1, 3, 64, 96), {}))
    return trt, cudart


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "upn.onnx"
    path.write_bytes(b"an exported graph")
    return path


def test_the_engine_is_built_once_for_the_selected_gpu(doubles, onnx_file, tmp_path):
    trt, cudart = doubles
    entry = runtime_tensorrt.ensure_engine(onnx_file, tmp_path / "cache", "fp16", gpu_index=1)
    assert cudart.current[-1] == 1, "the builder builds for the current device: it must be the chosen one"
    assert (entry.key.gpu_name, entry.key.compute_capability) == ("NVIDIA H100 80GB HBM3", "9.0")
    assert entry.is_valid() and entry.engine_path.read_bytes() == b"plan 1"
    assert runtime_tensorrt.ensure_engine(onnx_file, tmp_path / "cache", "fp16", gpu_index=1) == entry
    assert len(trt.builds) == 1, "a valid cached engine is not rebuilt"
    other = runtime_tensorrt.ensure_engine(onnx_file, tmp_path / "cache", "fp16", gpu_index=0)
    assert other.engine_path != entry.engine_path and other.key.compute_capability == "8.9"
    runtime_tensorrt.ensure_engine(onnx_file, tmp_path / "cache", "fp16", rebuild=True, gpu_index=1)
    assert len(trt.builds) == 3


def test_cached_engine_names_the_entry_a_node_would_load_without_building(doubles, onnx_file, tmp_path):
    trt, _ = doubles
    entry = runtime_tensorrt.cached_engine(onnx_file, tmp_path, "fp16", gpu_index=1)
    assert not entry.is_valid() and trt.builds == []
    assert runtime_tensorrt.ensure_engine(onnx_file, tmp_path, "fp16", gpu_index=1) == entry
    assert runtime_tensorrt.cached_engine(onnx_file, tmp_path, "fp16", gpu_index=1).is_valid()


@pytest.mark.parametrize(("index", "message"), [(2, "has 2 CUDA device"), (-1, ">= 0")])
def test_a_gpu_index_that_does_not_exist_is_refused(doubles, onnx_file, tmp_path, index, message):
    with pytest.raises(ValueError, match=message):
        runtime_tensorrt.ensure_engine(onnx_file, tmp_path, "fp16", gpu_index=index)
    assert doubles[0].builds == []


# --- the CUDA driver check ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("driver", "bindings"), [(12040, "12.6.0"), (12000, "12.0.0"), (13000, "13.0.1"), (13020, "12.9.0")]
)
def test_drivers_new_enough_for_the_cuda_python_major_pass(driver, bindings):
    assert runtime_tensorrt.driver_mismatch(driver, bindings) is None


@pytest.mark.parametrize(
    ("driver", "bindings", "expected"),
    [
        (12080, "13.0.0", ["cuda-python 13.0.0", "CUDA 13 or newer", "CUDA 12.8", "'cuda-python>=12.0,<13'"]),
        (11080, "12.4.0", ["cuda-python 12.4.0", "CUDA 11.8", "upgrade the NVIDIA driver to one for CUDA 12"]),
        (0, "12.4.0", ["no NVIDIA driver", "install an NVIDIA driver for CUDA 12"]),
    ],
)
def test_a_driver_too_old_for_cuda_python_is_one_clear_line(driver, bindings, expected):
    message = runtime_tensorrt.driver_mismatch(driver, bindings)
    assert message is not None and "\n" not in message
    for part in expected:
        assert part in message


def test_start_up_fails_on_a_driver_mismatch_before_building(doubles, onnx_file, tmp_path, monkeypatch):
    trt, cudart = doubles
    cudart.driver_version = 12020
    monkeypatch.setattr(runtime_tensorrt, "cuda_python_version", lambda: "13.0.0")
    with pytest.raises(RuntimeError, match=r"cuda-python 13\.0\.0 needs .* CUDA 12\.2"):
        runtime_tensorrt.ensure_engine(onnx_file, tmp_path, "fp16")
    assert trt.builds == [] and cudart.current == []


# --- one default precision for build-engine and the node ------------------------------------------------------


def build_engine_args(argv: list[str]) -> argparse.Namespace:
    from chatrex_ros.commands import upn as upn_commands

    parser = argparse.ArgumentParser()
    upn_commands.register(parser.add_subparsers())
    return parser.parse_args(["build-engine", *argv])


def test_a_default_node_loads_the_engine_that_default_build_engine_built(doubles, onnx_file, tmp_path, capsys):
    trt, _ = doubles
    cache = tmp_path / "cache"
    args = build_engine_args(["--onnx", str(onnx_file), "--cache-dir", str(cache)])
    assert args.func(args) == 0
    built = capsys.readouterr().out.split()[-1]
    params = resolved(
        ProposalNodeParams, {"backend": "tensorrt", "onnx": str(onnx_file), "engine_cache_dir": str(cache)}
    )
    kwargs = proposal_backend_kwargs(params)
    assert kwargs["precision"] == args.precision == engine_cache.DEFAULT_PRECISION
    node_entry = runtime_tensorrt.ensure_engine(
        kwargs["onnx_path"], kwargs["engine_cache_dir"], kwargs["precision"], gpu_index=kwargs["gpu_index"]
    )
    assert str(node_entry.engine_path) == built and len(trt.builds) == 1


def test_auto_precision_keeps_torch_at_fp32_and_explicit_values_win():
    assert backend_precision(resolved(ProposalNodeParams, {"backend": "torch"})) == "fp32"
    assert backend_precision(resolved(ProposalNodeParams, {"backend": "tensorrt", "precision": "fp32"})) == "fp32"
    torch_kwargs = proposal_backend_kwargs(resolved(ProposalNodeParams, {"backend": "torch", "checkpoint": "u.pth"}))
    assert torch_kwargs["dtype"] == "float32"


def test_gpu_index_reaches_every_gpu_backend_and_is_validated():
    def kwargs(**values: Any) -> dict[str, Any]:
        return proposal_backend_kwargs(resolved(ProposalNodeParams, {"gpu_index": 1, **values}))

    assert kwargs(backend="tensorrt")["gpu_index"] == 1
    assert kwargs(backend="torch", device="cuda", checkpoint="u.pth")["device"] == "cuda:1"
    assert kwargs(backend="torch", device="cpu", checkpoint="u.pth")["device"] == "cpu"
    assert kwargs(backend="onnxruntime", device="cuda", onnx="u.onnx")["device_id"] == 1
    with pytest.raises(ValueError, match="gpu_index must be >= 0"):
        resolve(PROPOSAL_NODE, {"gpu_index": -1})


# --- the engine cache: key, atomic writes, one build per key -----------------------------------------------


def cache_key(**changes: Any) -> EngineKey:
    values: dict[str, Any] = dict(
        gpu_name="NVIDIA RTX 4090",
        compute_capability="8.9",
        tensorrt_version="10.3.0",
        precision="fp16",
        input_shape=(1, 3, 64, 96),
        onnx_sha256="c" * 64,
        builder=BuilderSettings(1 << 30, 3, False, "2"),
        package_version="0.1.0",
    )
    values.update(changes)
    return EngineKey(**values)


def test_the_sidecar_records_every_part_of_the_key(tmp_path):
    entry = cache_entry(tmp_path, cache_key())
    entry.store(b"plan")
    recorded = json.loads(entry.sidecar_path.read_text())
    assert recorded["builder"] == {"workspace_bytes": 1 << 30, "optimization_level": 3, "tf32": False, "fp32_rule": "2"}
    assert (recorded["compute_capability"], recorded["package_version"]) == ("8.9", "0.1.0")


def test_the_package_version_falls_back_to_the_source_tree(monkeypatch):
    import importlib.metadata

    import chatrex_ros

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert engine_cache.package_version() == chatrex_ros.__version__


@pytest.mark.parametrize("rebuild", [False, True])
def test_concurrent_builders_of_one_key_build_once(tmp_path, rebuild):
    """Two threads, each with its own lock file descriptor (flock treats them as two processes would be)."""
    key = cache_key()
    if rebuild:
        cache_entry(tmp_path, key).store(b"old plan")
    calls: list[str] = []
    barrier = threading.Barrier(2)
    results: dict[str, bool] = {}

    def build() -> bytes:
        calls.append(threading.current_thread().name)
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        return b"new plan"

    def worker() -> None:
        barrier.wait()
        results[threading.current_thread().name] = ensure_built(cache_entry(tmp_path, key), build, rebuild)

    threads = [threading.Thread(target=worker, name=f"builder-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and sorted(results.values()) == [False, True]
    assert cache_entry(tmp_path, key).engine_path.read_bytes() == b"new plan"
    assert not list(tmp_path.glob("*.tmp"))


BUILDER_PROCESS = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from chatrex_ros.models.upn.engine_cache import BuilderSettings, EngineKey, cache_entry, ensure_built

    cache, log, start = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    key = EngineKey("NVIDIA RTX 4090", "8.9", "10.3.0", "fp16", (1, 3, 64, 96), "d" * 64,
                    BuilderSettings(1 << 30, 3, False, "2"), "0.1.0")
    entry = cache_entry(cache, key)

    def build():
        with log.open("a") as handle:
            handle.write("built\\n")
        time.sleep(0.5)
        return b"plan from a process"

    while not start.exists():
        time.sleep(0.01)
    built = ensure_built(entry, build)
    print(entry.engine_path, built, entry.engine_path.read_bytes().decode())
    """
)


def test_two_processes_building_the_same_engine_build_it_once(tmp_path):
    log, start = tmp_path / "builds.log", tmp_path / "start"
    command = [sys.executable, "-c", BUILDER_PROCESS, str(tmp_path / "cache"), str(log), str(start)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    time.sleep(0.5)  # both imported and polling
    start.touch()
    outputs = [p.communicate(timeout=60)[0].split() for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert log.read_text() == "built\n"
    assert outputs[0][0] == outputs[1][0] and sorted(o[1] for o in outputs) == ["False", "True"]
    assert all(" ".join(o[2:]) == "plan from a process" for o in outputs)


def test_engine_files_are_written_through_unique_temporary_files(tmp_path, monkeypatch):
    import os

    sources: list[str] = []
    real_replace = os.replace

    def recording_replace(source: str, target: Any) -> None:
        sources.append(source)
        real_replace(source, target)

    monkeypatch.setattr(engine_cache.os, "replace", recording_replace)
    entry = cache_entry(tmp_path, cache_key())
    entry.store(b"one")
    entry.store(b"two")
    engine_temps = [s for s in sources if Path(s).name.startswith(entry.engine_path.name)]
    assert len(engine_temps) == 2 and len(set(engine_temps)) == 2
    assert all(Path(s).parent == tmp_path and s.endswith(".tmp") for s in sources)
    assert entry.engine_path.read_bytes() == b"two" and not list(tmp_path.glob("*.tmp"))


def test_a_failed_build_leaves_no_engine_and_no_temporary_file(tmp_path):
    entry = cache_entry(tmp_path, cache_key())

    def failing() -> bytes:
        raise RuntimeError("TensorRT failed")

    with pytest.raises(RuntimeError, match="TensorRT failed"):
        ensure_built(entry, failing)
    assert not entry.is_valid() and not entry.engine_path.exists() and not list(tmp_path.glob("*.tmp"))
    assert ensure_built(entry, lambda: b"plan") is True and entry.is_valid()
