"""UPN proposal backends by name, for the node registry: ``torch``, ``onnxruntime``, ``tensorrt``.

The implementations live in :mod:`chatrex_ros.models.upn` (``runtime_torch``, ``runtime_onnx``,
``runtime_tensorrt``); each imports its heavy dependency only when constructed, so a missing optional
package fails with the ``pip install chatrex_ros[...]`` line to run. Every backend needs its model file:
``torch`` without ``checkpoint`` is a ValueError (random weights only with ``random_weights=True``, for
benchmarks), because proposals from an untrained UPN look like boxes but mean nothing.
"""

from __future__ import annotations

from typing import Any

from chatrex_ros.models.base import ProposalBackend

UPN_BACKENDS = ("torch", "onnxruntime", "tensorrt")


def make_upn_backend(name: str, **params: Any) -> ProposalBackend:
    """Build the named backend from its constructor keywords (the node parameters)."""
    if name == "torch":
        from chatrex_ros.models.upn.runtime_torch import TorchUPNBackend

        return TorchUPNBackend(**params)
    if name == "onnxruntime":
        from chatrex_ros.models.upn.runtime_onnx import OnnxRuntimeUPNBackend

        return OnnxRuntimeUPNBackend(**params)
    if name == "tensorrt":
        from chatrex_ros.models.upn.runtime_tensorrt import TensorRTUPNBackend

        return TensorRTUPNBackend(**params)
    raise ValueError(f"unknown UPN backend {name!r}; choose one of {', '.join(UPN_BACKENDS)}")


def __getattr__(attribute: str) -> Any:
    """Lazy access to the backend classes (``from chatrex_ros.models.upn_backends import TorchUPNBackend``)."""
    modules = {
        "TorchUPNBackend": "runtime_torch",
        "OnnxRuntimeUPNBackend": "runtime_onnx",
        "TensorRTUPNBackend": "runtime_tensorrt",
    }
    if attribute in modules:
        import importlib

        return getattr(importlib.import_module(f"chatrex_ros.models.upn.{modules[attribute]}"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
