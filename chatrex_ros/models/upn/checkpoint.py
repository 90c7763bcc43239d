"""Loading UPN weights: the official ``upn_large.pth`` (``torch.load(path)["model"]``) or a safetensors file.

The official file is a plain ``state_dict()`` dump, so it holds every alias name of the one shared box
MLP with identical values, and may or may not hold the deterministic ``relative_position_index`` buffers.
Before a ``strict=True`` load, the raw dict is normalised:

* aliases: every name of the shared box MLP takes the value of the first name present (checked equal);
* ``relative_position_index``: taken from the model when absent, checked equal when present;
* unknown extra keys (training-time leftovers) are dropped and reported in the log.

``strict=True`` then guarantees that every real parameter was in the file. A ``.pth`` is read with
``weights_only=True``, so no pickled code runs. Training-style checkpoints also hold an ``argparse.Namespace``
of the run's arguments, numpy values, an optimizer state and counters beside ``"model"``: those types are
allowed for the duration of the load (:func:`allowed_globals`) and everything but ``"model"`` is ignored.
Anything else is refused in one line naming what the file holds and the ``chatrex-ros convert-upn`` command
that turns a trusted file into safetensors.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pickle
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .artifacts import CHECKPOINT_HINT
from .model import UPN

LOG = logging.getLogger(__name__)

_SHARED_BOX_HEAD = re.compile(r"^(?:transformer\.decoder\.)?bbox_embed\.\d+\.(layers\.\d+\.(?:weight|bias))$")
_DETERMINISTIC_BUFFER = "relative_position_index"
_REFUSED_NAME = re.compile(r"GLOBAL (\S+) was not an allowed global|but got <class '([^']+)'>")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

SafeGlobal = Callable[..., Any] | tuple[Callable[..., Any], str]


def allowed_globals() -> list[SafeGlobal]:
    """What a training-style checkpoint holds beside the tensors, all inert data: nothing here runs code.

    ``argparse.Namespace`` (the run's arguments) and numpy's pickle helpers for scalars and arrays (epochs,
    losses, metrics). numpy 2 renamed ``numpy.core`` to ``numpy._core``; files written with numpy 1 name the
    helpers by the old path, so each is allowed under both names. The dtype classes are listed because
    unpickling a dtype sets its state, which the weights-only unpickler allows only for listed types.
    """
    import numpy as np

    multiarray = _numpy_multiarray()
    allowed: list[SafeGlobal] = [argparse.Namespace, np.dtype, np.ndarray]
    for helper in (multiarray._reconstruct, multiarray.scalar):
        allowed += [(helper, f"{package}.multiarray.{helper.__name__}") for package in ("numpy.core", "numpy._core")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    if dtypes is not None:
        allowed += [t for t in vars(dtypes).values() if isinstance(t, type) and issubclass(t, np.dtype)]
    return allowed


def _numpy_multiarray() -> Any:
    """The ``multiarray`` module of numpy under its current name (``_core`` since numpy 2)."""
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Raw tensors of a ``.pth`` (``["model"]`` when present) or ``.safetensors`` file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"UPN checkpoint not found: {file}; {CHECKPOINT_HINT}")
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ImportError("reading .safetensors needs safetensors: pip install chatrex_ros[torch]") from error
        try:
            return dict(load_file(str(file)))
        except Exception as error:  # safetensors' SafetensorError is no ValueError: one line all the same
            raise ValueError(f"{file} is not a readable safetensors file: {_reason(error)}") from None
    loaded = _load_pth(file)
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        ignored = sorted(str(k) for k in loaded if k != "model")
        if ignored:
            LOG.info("%s: using its 'model' state dict, ignoring %s", file.name, ", ".join(ignored))
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{file} is not a UPN checkpoint: expected a state dict (or {{'model': state_dict}})")
    return loaded


def _load_pth(file: Path) -> Any:
    """``torch.load(weights_only=True)`` with :func:`allowed_globals`; any failure becomes a one-line ValueError.

    The allow-list is scoped to this call, so loading a UPN does not widen what other ``torch.load`` calls
    in the process accept. ``safe_globals`` removes on exit what it added, so entries the process had
    already allowed itself are left out of it (and stay allowed).
    """
    already = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([g for g in allowed_globals() if g not in already]):
        try:
            return torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as error:  # the bytes decide: UnpicklingError, RuntimeError (zip), EOFError, KeyError
            refused = _refused_globals(file, error)
            if refused:
                raise ValueError(_refusal(file, refused)) from None
            raise ValueError(f"{file} is not a readable PyTorch checkpoint: {_reason(error)}") from None


def _refused_globals(file: Path, error: Exception) -> list[str]:
    """The classes and functions the file holds beyond the allow-list; empty when that is not why it failed."""
    if not isinstance(error, pickle.UnpicklingError) or "Weights only load failed" not in str(error):
        return []
    try:  # static scan of the pickle, inside the caller's allow-list: every refused global, not just the first
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
    except Exception:  # e.g. the pre-1.6 non-zip format, which it cannot scan
        names = []
    # Else what the unpickler stopped at (none for bytes that are no pickle, e.g. "Unsupported operand").
    return names or [a or b for a, b in _REFUSED_NAME.findall(str(error))]


def _refusal(file: Path, names: list[str]) -> str:
    """One line: the file, the globals it holds that are not allowed, and the conversion to run (if trusted)."""
    out = file.with_suffix(".safetensors")
    return (
        f"{file} holds {', '.join(names)}, which weights-only loading does not allow (it takes tensors, "
        "argparse.Namespace and numpy values); if you trust the file, convert it once with: "
        f"chatrex-ros convert-upn --checkpoint {shlex.quote(str(file))} --out {shlex.quote(str(out))}"
    )


def _reason(error: Exception) -> str:
    """One line of why torch.load failed: the weights-only unpickler's own reason, else the first line."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    marker = "WeightsUnpickler error:"
    for index, line in enumerate(lines):
        if marker in line:
            detail = line.split(marker, 1)[1].strip() or (lines[index + 1] if index + 1 < len(lines) else "")
            return detail or type(error).__name__
    if isinstance(error, EOFError):
        return "the file ends early (empty or cut short)"
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def normalise_state_dict(model: UPN, raw: dict[str, Tensor]) -> dict[str, Tensor]:
    """The raw checkpoint dict -> exactly the model's keys (see the module docstring)."""
    expected = model.state_dict()
    state: dict[str, Tensor] = {}
    shared: dict[str, Tensor] = {}
    for key, value in raw.items():
        match = _SHARED_BOX_HEAD.match(key)
        if match and key in expected:
            first = shared.setdefault(match.group(1), value)
            if first is not value and not torch.equal(first, value):
                raise ValueError(f"checkpoint alias {key} differs from the other names of the shared box MLP")
    extra = sorted(k for k in raw if k not in expected)
    if extra:
        LOG.warning("ignoring %d checkpoint keys the UPN does not use: %s", len(extra), ", ".join(extra[:10]))
    for key, reference in expected.items():
        match = _SHARED_BOX_HEAD.match(key)
        if match and match.group(1) in shared:
            state[key] = shared[match.group(1)]
        elif key.endswith(_DETERMINISTIC_BUFFER):
            given = raw.get(key)
            if given is not None and given.shape != reference.shape:
                state[key] = given  # a wrong window size: let load_state_dict report the size mismatch
                continue
            if given is not None and not reference.is_meta and not torch.equal(given.to(reference.dtype), reference):
                raise ValueError(f"checkpoint buffer {key} differs from the Swin relative position index")
            state[key] = reference
        elif key in raw:
            state[key] = raw[key]
    return state


def load_upn_weights(model: UPN, path: str | Path) -> UPN:
    """Load a checkpoint into ``model`` with ``strict=True`` after :func:`normalise_state_dict`."""
    state = normalise_state_dict(model, read_state_dict(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit UPN variant {model.config.name!r}: {error}") from None
    return model
