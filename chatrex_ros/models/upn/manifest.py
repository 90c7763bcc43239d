"""Does a UPN checkpoint hold what the model needs? Names and shapes only, without reading the tensors.

``chatrex-ros doctor`` asks this before a deployment: a safetensors file answers from its header, a ``.pth``
from a memory-mapped load (the zip format's tensors stay on disk until touched). The expected names and
shapes come from the model built on the ``meta`` device, with the same leniency as the loader
(:mod:`~chatrex_ros.models.upn.checkpoint`): one name of the shared box MLP stands for all its aliases, and
the deterministic ``relative_position_index`` buffers may be absent.
"""

from __future__ import annotations

from pathlib import Path

from .artifacts import CHECKPOINT_HINT

_ALIAS_GROUP_PATTERN = r"^(?:transformer\.decoder\.)?bbox_embed\.\d+\.(layers\.\d+\.(?:weight|bias))$"


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a ``.safetensors`` or ``.pth`` UPN checkpoint, reading no tensor data."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"UPN checkpoint not found: {file}; {CHECKPOINT_HINT}")
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    import torch

    from .checkpoint import read_state_dict

    try:  # mmap: the shapes without reading ~0.9 GB; a file torch cannot map is read the loader's way
        loaded = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
        state = loaded["model"] if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict) else loaded
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("not a plain state dict")
    except Exception:
        state = read_state_dict(file)
    return {key: tuple(value.shape) for key, value in state.items()}


def checkpoint_manifest_problems(path: str | Path, variant: str = "large") -> list[str]:
    """What the checkpoint lacks or has in the wrong shape for UPN ``variant`` (empty when it fits)."""
    import re

    from .model import build_upn

    found = checkpoint_shapes(path)
    expected = {key: tuple(value.shape) for key, value in build_upn(variant, device="meta").state_dict().items()}
    alias = re.compile(_ALIAS_GROUP_PATTERN)
    groups_present = {m.group(1) for key in found if (m := alias.match(key))}
    missing, wrong = [], []
    for key, shape in expected.items():
        if key in found:
            if found[key] != shape:
                wrong.append(f"{key} is {list(found[key])}, expected {list(shape)}")
        elif key.endswith("relative_position_index") or (m := alias.match(key)) and m.group(1) in groups_present:
            continue
        else:
            missing.append(key)
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})")
    problems += wrong[:5]
    return problems
