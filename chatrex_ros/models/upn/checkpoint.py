"""Loading UPN weights: the official ``upn_large.pth`` (``torch.load(path)["model"]``) or a safetensors file.

The official file is a plain ``state_dict()`` dump, so it holds every alias name of the one shared box
MLP with identical values, and may or may not hold the deterministic ``relative_position_index`` buffers.
Before a ``strict=True`` load, the raw dict is normalised:

* aliases: every name of the shared box MLP takes the value of the first name present (checked equal);
* ``relative_position_index``: taken from the model when absent, checked equal when present;
* unknown extra keys (training-time leftovers) are dropped and reported in the log.

``strict=True`` then guarantees that every real parameter was in the file. The file is read with
``weights_only=True``: no pickled code runs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import Tensor

from .artifacts import CHECKPOINT_HINT
from .model import UPN

LOG = logging.getLogger(__name__)

_SHARED_BOX_HEAD = re.compile(r"^(?:transformer\.decoder\.)?bbox_embed\.\d+\.(layers\.\d+\.(?:weight|bias))$")
_DETERMINISTIC_BUFFER = "relative_position_index"


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
        return dict(load_file(str(file)))
    loaded = torch.load(str(file), map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{file} is not a UPN checkpoint: expected a state dict (or {{'model': state_dict}})")
    return loaded


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
