"""The model-facing node parameters and how they become backends: one mapping for nodes and offline tools.

``proposal_node`` and ``language_node`` declare these tables; ``chatrex-ros eval/demo`` read the same
``config/chatrex.yaml`` sections through :func:`chatrex_ros.parameters.resolve`, so a model path configured
once is used everywhere.
"""

from __future__ import annotations

import json
from typing import Any

from chatrex_ros.models.base import LanguageBackend, ProposalPipeline, SelectionPolicy
from chatrex_ros.models.registry import (
    LANGUAGE_BACKENDS,
    PROPOSAL_BACKENDS,
    make_language_backend,
    make_proposal_backend,
)
from chatrex_ros.parameters import ParamSpec, sensor_qos_specs

PROPOSAL_NODE_PARAMETERS: list[ParamSpec] = [
    ParamSpec("backend", "selective_search", "Proposal backend.", PROPOSAL_BACKENDS, read_only=True, allow_plugin=True),
    ParamSpec(
        "backend_options", "", "JSON object of keyword arguments for a `python:module:Class` backend.", read_only=True
    ),
    ParamSpec(
        "granularity",
        "fine",
        "UPN prompt: fine (parts, anything) or coarse (instances).",
        ("fine", "coarse"),
        read_only=True,
    ),
    ParamSpec("checkpoint", "", "UPN checkpoint (.pth or .safetensors) for the torch backend.", read_only=True),
    ParamSpec(
        "model_variant",
        "large",
        "UPN architecture for the torch backend (large or tiny).",
        ("large", "tiny"),
        read_only=True,
    ),
    ParamSpec(
        "onnx", "", "UPN ONNX file (chatrex-ros export-upn) for the onnxruntime and tensorrt backends.", read_only=True
    ),
    ParamSpec("engine_cache_dir", "~/.cache/chatrex_ros/engines", "TensorRT engine cache directory.", read_only=True),
    ParamSpec("device", "cpu", "Device for torch / onnxruntime backends.", ("cpu", "cuda"), read_only=True),
    ParamSpec(
        "precision",
        "fp32",
        "Inference precision (torch: fp32/fp16/bf16, tensorrt: fp32/fp16).",
        ("fp32", "fp16", "bf16"),
        read_only=True,
    ),
    ParamSpec(
        "selective_search_long_side",
        400,
        "Selective search works on a copy this long (px).",
        minimum=64,
        maximum=4096,
        read_only=True,
    ),
    ParamSpec("min_score", 0.3, "Drop proposals scoring below this.", minimum=0.0, maximum=1.0),
    ParamSpec("nms_iou", 0.8, "Greedy NMS IoU threshold (<= 0 disables NMS).", minimum=-1.0, maximum=1.0),
    ParamSpec("max_proposals", 100, "Keep at most this many (ChatRex has 100 index tokens).", minimum=1, maximum=100),
    ParamSpec(
        "image_transport",
        "raw",
        "raw: subscribe `image`; compressed: `image/compressed`.",
        ("raw", "compressed"),
        read_only=True,
    ),
    ParamSpec("warmup", True, "Run the backend once on a blank frame before serving.", read_only=True),
    ParamSpec(
        "input_silence_s", 5.0, "Warn on /diagnostics when no image arrives for this long.", minimum=0.5, maximum=3600.0
    ),
    *sensor_qos_specs(),
]

LANGUAGE_NODE_PARAMETERS: list[ParamSpec] = [
    ParamSpec(
        "language_backend",
        "none",
        "Language model backend ('none' answers MODEL_ERROR).",
        LANGUAGE_BACKENDS,
        read_only=True,
        allow_plugin=True,
    ),
    ParamSpec(
        "model_path",
        "",
        "Local ChatRex checkpoint directory (e.g. a download of IDEA-Research/ChatRex-7B).",
        read_only=True,
    ),
    ParamSpec(
        "trust_remote_code", False, "Allow the checkpoint's own Python code to run (ChatRex needs it).", read_only=True
    ),
    ParamSpec("device", "cuda", "Model device.", ("cpu", "cuda"), read_only=True),
    ParamSpec(
        "dtype",
        "auto",
        "Model dtype (auto: bfloat16 on CUDA, float32 on CPU).",
        ("auto", "float32", "float16", "bfloat16"),
        read_only=True,
    ),
    ParamSpec(
        "backend_options", "", "JSON object of extra keyword arguments for the language backend.", read_only=True
    ),
    ParamSpec("max_new_tokens", 512, "Default generation budget per query.", minimum=1, maximum=8192),
    ParamSpec(
        "query_timeout_s", 60.0, "Default per-query timeout (queue + model), seconds.", minimum=0.01, maximum=3600.0
    ),
    ParamSpec(
        "queue_size", 4, "Queries waiting beyond this are answered BUSY.", minimum=1, maximum=100, read_only=True
    ),
    ParamSpec(
        "frame_cache_size",
        8,
        "Answerable frames (image + proposals) kept; a query names one by stamp or takes the newest.",
        minimum=1,
        maximum=256,
        read_only=True,
    ),
    ParamSpec(
        "recent_images",
        4,
        "Newest images kept until the proposer claims them on `proposals/pending`; a proposer that does not announce its frames needs rate x latency.",
        minimum=1,
        maximum=256,
        read_only=True,
    ),
    ParamSpec(
        "pairing_wait_s",
        5.0,
        "How long a query waits for proposals when its frame has none yet.",
        minimum=0.0,
        maximum=60.0,
    ),
    ParamSpec(
        "input_silence_s",
        5.0,
        "Warn on /diagnostics when an input (image, proposals) delivers nothing for this long.",
        minimum=0.5,
        maximum=3600.0,
    ),
    ParamSpec(
        "publish_annotated", False, "Publish the answered frame with boxes drawn on `answer_image`.", read_only=True
    ),
    ParamSpec(
        "image_transport",
        "raw",
        "raw: subscribe `image`; compressed: `image/compressed`.",
        ("raw", "compressed"),
        read_only=True,
    ),
    *sensor_qos_specs(),
]

_PRECISION_TO_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def proposal_backend_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords for the chosen proposal backend, from proposal_node parameters."""
    name = values["backend"]
    if name == "selective_search":
        return {"long_side": values["selective_search_long_side"]}
    if name == "torch":
        return {
            "checkpoint": values["checkpoint"] or None,
            "variant": values["model_variant"],
            "granularity": values["granularity"],
            "device": values["device"],
            "dtype": _PRECISION_TO_DTYPE[values["precision"]],
        }
    if name == "onnxruntime":
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if values["device"] == "cuda"
            else ["CPUExecutionProvider"]
        )
        return {"onnx_path": values["onnx"], "providers": providers}
    if name == "tensorrt":
        return {
            "onnx_path": values["onnx"],
            "engine_cache_dir": values["engine_cache_dir"],
            "precision": values["precision"],
        }
    return backend_options(values)


def selection_policy(values: dict[str, Any]) -> SelectionPolicy:
    return SelectionPolicy(values["min_score"], values["nms_iou"], values["max_proposals"])


def proposal_pipeline(values: dict[str, Any]) -> ProposalPipeline:
    """Backend + selection policy from proposal_node parameters (ValueError/ImportError/... on a bad setup)."""
    backend = make_proposal_backend(values["backend"], **proposal_backend_kwargs(values))
    return ProposalPipeline(backend, selection_policy(values))


def backend_options(values: dict[str, Any]) -> dict[str, Any]:
    """The ``backend_options`` JSON object (ValueError when it is not one)."""
    try:
        options = json.loads(values["backend_options"]) if values["backend_options"].strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"backend_options is not valid JSON: {error}") from None
    if not isinstance(options, dict):
        raise ValueError("backend_options must be a JSON object")
    return options


def language_backend_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords for the language backend, from language_node parameters."""
    options = backend_options(values)
    if values["language_backend"] == "chatrex":
        base = {
            "model_path": values["model_path"],
            "device": values["device"],
            "dtype": None if values["dtype"] == "auto" else values["dtype"],
            "trust_remote_code": values["trust_remote_code"],
        }
        return {**base, **options}
    return options


def language_backend(values: dict[str, Any]) -> LanguageBackend | None:
    """The language backend from language_node parameters, or None for 'none'."""
    return make_language_backend(values["language_backend"], **language_backend_kwargs(values))
