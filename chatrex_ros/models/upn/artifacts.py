"""Contracts between the exporter and the runtimes: tensor names, ONNX metadata keys, file hashing.

Torch-free, so the ONNX Runtime and TensorRT backends read exported files without importing torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

INPUT_NAME, BOXES_NAME, LOGITS_NAME = "pixels", "boxes", "logits"
METADATA_PREFIX = "chatrex_ros.upn."
FP32_NAME_PATTERNS: tuple[str, ...] = ("/query_selection/", "/box_update/", "/output_head/", "bbox_embed")
"""Substrings of exported node (and so TensorRT layer) names that must stay fp32 in a reduced-precision
engine: proposal generation with its +inf sentinels, the top-k selection, and the box head."""

CHECKPOINT_HINT = (
    "download upn_large.pth from the 'upn-large' release of github.com/IDEA-Research/ChatRex "
    "(IDEA License 1.0, non-commercial) and pass its path"
)
EXPORT_HINT = "make one with: chatrex-ros export-upn --checkpoint upn_large.pth --size HxW --prompt fine --out upn.onnx"


def parse_hw(text: str) -> tuple[int, int]:
    """``"750x1333"`` -> (750, 1333), with a clear error for anything else."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or min(int(p) for p in parts) < 32:
        raise ValueError(f"size must be HEIGHTxWIDTH in pixels, each >= 32 (e.g. 750x1333), got {text!r}")
    return int(parts[0]), int(parts[1])


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (model files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Our keys of an ONNX model's metadata map, without the prefix."""
    return {k[len(METADATA_PREFIX) :]: v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)}


def require_file(path: str | Path, what: str, hint: str) -> Path:
    """The path if it is a file, else FileNotFoundError naming it and how to get it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{what} not found: {file}; {hint}")
    return file
