"""Where a TensorRT engine lives on disk and when it must be rebuilt (pure Python, no TensorRT needed).

An engine is only valid for the exact GPU model, TensorRT version, precision, input shape and ONNX file
it was built from; the cache key holds all five, so a change of any of them picks a new file instead of
loading a stale (or crashing) plan. A JSON sidecar records the full key for humans and for checks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

PRECISIONS = ("fp16", "fp32")


@dataclass(frozen=True)
class EngineKey:
    """Everything that makes a serialized engine invalid when it changes."""

    gpu_name: str
    tensorrt_version: str
    precision: str
    input_shape: tuple[int, ...]
    onnx_sha256: str

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if len(self.onnx_sha256) != 64 or not re.fullmatch(r"[0-9a-f]{64}", self.onnx_sha256):
            raise ValueError(f"onnx_sha256 must be a 64-digit lowercase hex digest, got {self.onnx_sha256!r}")
        if not self.input_shape or any(int(d) <= 0 for d in self.input_shape):
            raise ValueError(f"input_shape must be static and positive, got {self.input_shape}")

    def digest(self) -> str:
        """A short stable hash of the whole key."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def file_stem(self) -> str:
        """Readable and unique: ``upn_750x1333_fp16_NVIDIA-H100_trt10.3.0_<digest>``."""
        gpu = re.sub(r"[^A-Za-z0-9.]+", "-", self.gpu_name).strip("-") or "gpu"
        shape = "x".join(str(d) for d in self.input_shape[-2:])
        return f"upn_{shape}_{self.precision}_{gpu}_trt{self.tensorrt_version}_{self.digest()}"


@dataclass(frozen=True)
class CachedEngine:
    """The engine file and its sidecar for one key."""

    engine_path: Path
    sidecar_path: Path
    key: EngineKey

    def is_valid(self) -> bool:
        """True when the engine exists and the sidecar records exactly this key."""
        if not self.engine_path.is_file() or self.engine_path.stat().st_size == 0 or not self.sidecar_path.is_file():
            return False
        try:
            recorded = json.loads(self.sidecar_path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return recorded == _key_record(self.key)

    def store(self, plan: bytes) -> None:
        """Write the plan then the sidecar, each atomically (a crash never leaves a half engine that looks valid)."""
        self.engine_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.engine_path, plan)
        _atomic_write(self.sidecar_path, json.dumps(_key_record(self.key), indent=1).encode())


def cache_entry(cache_dir: str | Path, key: EngineKey) -> CachedEngine:
    """The engine and sidecar paths for ``key`` in ``cache_dir`` (``~`` expanded); nothing is read or written."""
    stem = key.file_stem()
    directory = Path(cache_dir).expanduser()
    return CachedEngine(directory / f"{stem}.engine", directory / f"{stem}.json", key)


def _key_record(key: EngineKey) -> dict[str, object]:
    record = asdict(key)
    record["input_shape"] = list(key.input_shape)
    return record


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
