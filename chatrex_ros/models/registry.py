"""Backends by name: the one place that maps a node parameter / CLI flag to a backend object.

Besides the built-in names, ``python:package.module:ClassName`` loads any class that implements the
interface, so users (and the tests' model doubles) plug in their own backend without touching the nodes.
"""

from __future__ import annotations

import importlib
from typing import Any

from chatrex_ros.models.base import LanguageBackend, ProposalBackend

PROPOSAL_BACKENDS = ("selective_search", "torch", "onnxruntime", "tensorrt")
LANGUAGE_BACKENDS = ("none", "chatrex")
PLUGIN_PREFIX = "python:"


def load_object(spec: str) -> Any:
    """``python:package.module:Name`` -> the object ``Name`` of that module (a clear error otherwise)."""
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


def make_proposal_backend(name: str, **params: Any) -> ProposalBackend:
    """Build a proposal backend; ``params`` are that backend's constructor keywords."""
    if name == "selective_search":
        from chatrex_ros.models.selective_search import SelectiveSearchBackend

        backend: Any = SelectiveSearchBackend(**params)
    elif name in ("torch", "onnxruntime", "tensorrt"):
        from chatrex_ros.models.upn_backends import make_upn_backend

        backend = make_upn_backend(name, **params)
    elif name.startswith(PLUGIN_PREFIX):
        backend = load_object(name)(**params)
    else:
        raise ValueError(
            f"unknown proposal backend {name!r}; choose one of {', '.join(PROPOSAL_BACKENDS)} or 'python:module:Class'"
        )
    if not isinstance(backend, ProposalBackend):
        raise TypeError(f"{name!r} does not implement ProposalBackend (needs .name and .propose(image_rgb))")
    return backend


def make_language_backend(name: str, **params: Any) -> LanguageBackend | None:
    """Build a language backend, or None for 'none' (the graph then only proposes)."""
    if name == "none":
        return None
    if name == "chatrex":
        from chatrex_ros.models.chatrex import ChatRexBackend

        backend: Any = ChatRexBackend(**params)
    elif name.startswith(PLUGIN_PREFIX):
        backend = load_object(name)(**params)
    else:
        raise ValueError(
            f"unknown language backend {name!r}; choose one of {', '.join(LANGUAGE_BACKENDS)} or 'python:module:Class'"
        )
    if not isinstance(backend, LanguageBackend):
        raise TypeError(f"{name!r} does not implement LanguageBackend (needs .name and .generate(...))")
    return backend
