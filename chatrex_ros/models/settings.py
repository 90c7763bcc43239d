"""How the model-facing node parameters become backends: one mapping for the nodes and the offline tools.

``proposal_node`` and ``language_node`` build their backends here from their typed parameters
(:mod:`chatrex_ros.node_parameters`); ``chatrex-ros eval/demo`` read the same ``config/chatrex.yaml`` sections
into the same dataclasses, so a model path configured once is used everywhere.
"""

from __future__ import annotations

import json
from typing import Any

from chatrex_ros.models.base import LanguageBackend, ProposalPipeline, SelectionPolicy
from chatrex_ros.models.registry import make_language_backend, make_proposal_backend
from chatrex_ros.models.upn.engine_cache import DEFAULT_PRECISION
from chatrex_ros.node_parameters import LanguageNodeParams, ProposalNodeParams

_PRECISION_TO_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_AUTO_PRECISION = {"torch": "fp32", "tensorrt": DEFAULT_PRECISION}
"""``precision:=auto`` per backend: torch keeps fp32 (it also runs on CPU, where half precision is slow), TensorRT
takes build-engine's default, so a default node loads the engine the CLI built instead of building another."""


def backend_precision(params: ProposalNodeParams) -> str:
    """The node's ``precision`` with ``auto`` resolved for its backend."""
    return _AUTO_PRECISION.get(params.backend, "fp32") if params.precision == "auto" else params.precision


def _torch_device(params: ProposalNodeParams) -> str:
    """``cuda:<gpu_index>``; plain ``cuda`` (torch's current device, 0 in the node's process) for index 0."""
    return f"cuda:{params.gpu_index}" if params.device == "cuda" and params.gpu_index else params.device


def proposal_backend_kwargs(params: ProposalNodeParams) -> dict[str, Any]:
    """Constructor keywords for the chosen proposal backend."""
    name = params.backend
    if name == "selective_search":
        return {
            "long_side": params.selective_search_long_side,
            "mode": params.selective_search_mode,
            "workers": params.selective_search_workers,
        }
    if name == "torch":
        return {
            "checkpoint": params.checkpoint or None,
            "variant": params.model_variant,
            "granularity": params.granularity,
            "device": _torch_device(params),
            "dtype": _PRECISION_TO_DTYPE[backend_precision(params)],
        }
    if name == "onnxruntime":
        cpu = ["CPUExecutionProvider"]
        if params.device == "cuda":
            return {
                "onnx_path": params.onnx,
                "providers": ["CUDAExecutionProvider", *cpu],
                "device_id": params.gpu_index,
            }
        return {"onnx_path": params.onnx, "providers": cpu}
    if name == "tensorrt":
        return {
            "onnx_path": params.onnx,
            "engine_cache_dir": params.engine_cache_dir,
            "precision": backend_precision(params),
            "gpu_index": params.gpu_index,
        }
    return backend_options(params.backend_options)


def selection_policy(params: ProposalNodeParams) -> SelectionPolicy:
    """The selection policy of proposal_node's parameters (ValueError on an inconsistent one)."""
    return SelectionPolicy(params.min_score, params.nms_iou, params.max_proposals)


def proposal_pipeline(params: ProposalNodeParams) -> ProposalPipeline:
    """Backend + selection policy from proposal_node parameters (ValueError/ImportError/... on a bad setup)."""
    backend = make_proposal_backend(params.backend, **proposal_backend_kwargs(params))
    return ProposalPipeline(backend, selection_policy(params))


SECURITY_OPTIONS = frozenset({"trust_remote_code", "allow_hub_download"})
"""Keys ``backend_options`` may never set: running a checkpoint's code, or letting it reach the hub, is decided by
its own explicit parameter."""


def backend_options(text: str) -> dict[str, Any]:
    """A ``backend_options`` parameter's JSON object (ValueError when it is not one, or sets a security option)."""
    try:
        options = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"backend_options is not valid JSON: {error}") from None
    if not isinstance(options, dict):
        raise ValueError("backend_options must be a JSON object")
    refused = sorted(SECURITY_OPTIONS & options.keys())
    if refused:
        raise ValueError(
            f"backend_options may not set {', '.join(refused)}: use the {refused[0]} parameter itself "
            "(read-only at runtime), so the decision to run a checkpoint's code is always explicit"
        )
    return options


def language_backend_kwargs(params: LanguageNodeParams) -> dict[str, Any]:
    """Constructor keywords for the language backend."""
    options = backend_options(params.backend_options)
    if params.language_backend == "chatrex":
        base = {
            "model_path": params.model_path,
            "device": params.device,
            "dtype": None if params.dtype == "auto" else params.dtype,
            "trust_remote_code": params.trust_remote_code,
            "allow_hub_download": params.allow_hub_download,
        }
        return {**base, **options}
    if params.language_backend == "openai":
        vlm = params.vlm
        served: dict[str, Any] = {
            "base_url": vlm.base_url,
            "model": vlm.model,
            "api_key_env": vlm.api_key_env,
            "box_format": vlm.box_format,
            "timeout_s": vlm.timeout_s,
            "retries": vlm.retries,
            "match_iou": vlm.match_iou,
        }
        return {**served, **options}
    return options


def language_backend(params: LanguageNodeParams) -> LanguageBackend | None:
    """The language backend from language_node parameters, or None for 'none'."""
    return make_language_backend(params.language_backend, **language_backend_kwargs(params))
