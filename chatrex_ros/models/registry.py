"""Backends by name: the one place that maps a node parameter / CLI flag to a backend class.

:data:`PROPOSAL_BACKENDS` and :data:`LANGUAGE_BACKENDS` are the built-in names (the parameters' choices); the
``module:Class`` each stands for is listed here too. A backend's module is imported only when it is built, and its heavy
dependency (torch, onnxruntime, tensorrt, transformers) only when the class is constructed, so a missing
optional package fails with the ``pip install chatrex_ros[...]`` line to run. Besides the built-in names,
``python:package.module:ClassName`` loads any class that implements the interface, so users (and the tests'
model doubles) plug in their own backend without touching the nodes.

The UPN backends need their model file: ``torch`` without ``checkpoint`` is a ValueError (random weights only
with ``random_weights=True``, for benchmarks), because proposals from an untrained UPN look like boxes but
mean nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from chatrex_ros.models.base import LanguageBackend, ProposalBackend

PLUGIN_PREFIX = "python:"

_PROPOSAL_CLASSES: Mapping[str, str] = MappingProxyType(
    {
        "selective_search": "chatrex_ros.models.selective_search:SelectiveSearchBackend",
        "torch": "chatrex_ros.models.upn.runtime_torch:TorchUPNBackend",
        "onnxruntime": "chatrex_ros.models.upn.runtime_onnx:OnnxRuntimeUPNBackend",
        "tensorrt": "chatrex_ros.models.upn.runtime_tensorrt:TensorRTUPNBackend",
    }
)
PROPOSAL_BACKENDS: tuple[str, ...] = tuple(_PROPOSAL_CLASSES)
"""The built-in proposal backend names (the ``backend`` parameter's choices)."""

NO_LANGUAGE_BACKEND = "none"
"""The language backend name for "no model": the graph only proposes, queries are answered MODEL_ERROR."""

_LANGUAGE_CLASSES: Mapping[str, str] = MappingProxyType(
    {
        "chatrex": "chatrex_ros.models.chatrex:ChatRexBackend",
        "openai": "chatrex_ros.models.openai_vlm:OpenAIVLMBackend",
    }
)
LANGUAGE_BACKENDS: tuple[str, ...] = (NO_LANGUAGE_BACKEND, *_LANGUAGE_CLASSES)
"""The built-in language backend names (the ``language_backend`` parameter's choices)."""


def load_object(spec: str) -> Any:
    """``python:package.module:Name`` (or ``package.module:Name``) -> the object ``Name`` of that module."""
    target = spec[len(PLUGIN_PREFIX) :] if spec.startswith(PLUGIN_PREFIX) else spec
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"plugin spec {spec!r} must look like 'python:package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"cannot import module {module_name!r} for backend {spec!r}: {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attribute!r} (backend {spec!r})") from None


def _backend_class(kind: str, name: str, built_in: Mapping[str, str], choices: tuple[str, ...]) -> Any:
    if name in built_in:
        return load_object(built_in[name])
    if name.startswith(PLUGIN_PREFIX):
        return load_object(name)
    raise ValueError(f"unknown {kind} backend {name!r}; choose one of {', '.join(choices)} or 'python:module:Class'")


def make_proposal_backend(name: str, **params: Any) -> ProposalBackend:
    """Build a proposal backend; ``params`` are that backend's constructor keywords."""
    backend = _backend_class("proposal", name, _PROPOSAL_CLASSES, PROPOSAL_BACKENDS)(**params)
    if not isinstance(backend, ProposalBackend):
        raise TypeError(f"{name!r} does not implement ProposalBackend (needs .name and .propose(image_rgb))")
    return backend


def make_language_backend(name: str, **params: Any) -> LanguageBackend | None:
    """Build a language backend, or None for 'none' (the graph then only proposes)."""
    if name == NO_LANGUAGE_BACKEND:
        return None
    backend = _backend_class("language", name, _LANGUAGE_CLASSES, LANGUAGE_BACKENDS)(**params)
    if not isinstance(backend, LanguageBackend):
        raise TypeError(f"{name!r} does not implement LanguageBackend (needs .name and .generate(...))")
    return backend
