"""Where a TensorRT engine lives on disk, when it must be rebuilt, and who builds it (pure Python, no TensorRT).

A serialized engine is only valid for what it was built from: the ONNX file, the TensorRT version, the GPU model
and compute capability, the precision, the input shape, the builder settings (workspace, optimisation level,
TF32, the fp32 pinning rule) and the code that drove the build (the chatrex_ros version). The cache key holds
all of them, so a change of any picks a new file instead of loading a stale (or crashing) plan. A JSON sidecar
records the full key for humans and for the validity check.

Builds take minutes and several processes may want the same engine at once (two nodes starting, or
``chatrex-ros build-engine`` while a node starts): :func:`ensure_built` takes an exclusive ``flock`` on a
``.lock`` file next to the engine, so one process builds and the others wait, then find the finished engine.
Files are written to a unique temporary file in the cache directory and ``os.replace``-d into place, so a
reader never sees half an engine and two writers never share a temporary file.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)
PRECISIONS = ("fp16", "fp32")
DEFAULT_PRECISION = "fp16"
"""The one default TensorRT precision, of ``chatrex-ros build-engine`` and of the node (``precision:=auto``):
fp16 is what TensorRT is used for (about twice the fp32 speed), and the layers where fp16 changes the answer
are pinned to fp32 (:mod:`.precision`). Sharing it means the engine the CLI builds is the one a default node
loads, instead of the node building another one (minutes) at start-up."""


@dataclass(frozen=True)
class BuilderSettings:
    """The builder configuration that changes the engine (part of the key)."""

    workspace_bytes: int
    optimization_level: int
    tf32: bool
    fp32_rule: str  # version of the fp32 pinning rule (:data:`.precision.RULE_VERSION`), "-" for fp32 engines


@dataclass(frozen=True)
class EngineKey:
    """Everything that makes a serialized engine invalid when it changes."""

    gpu_name: str
    compute_capability: str  # "8.9"
    tensorrt_version: str
    precision: str
    input_shape: tuple[int, ...]
    onnx_sha256: str
    builder: BuilderSettings
    package_version: str

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if len(self.onnx_sha256) != 64 or not re.fullmatch(r"[0-9a-f]{64}", self.onnx_sha256):
            raise ValueError(f"onnx_sha256 must be a 64-digit lowercase hex digest, got {self.onnx_sha256!r}")
        if not self.input_shape or any(int(d) <= 0 for d in self.input_shape):
            raise ValueError(f"input_shape must be static and positive, got {self.input_shape}")
        if not re.fullmatch(r"\d+\.\d+", self.compute_capability):
            raise ValueError(f"compute_capability must be MAJOR.MINOR, got {self.compute_capability!r}")

    def digest(self) -> str:
        """A short stable hash of the whole key."""
        text = json.dumps(key_record(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def file_stem(self) -> str:
        """Readable and unique: ``upn_750x1333_fp16_NVIDIA-H100_sm90_trt10.3.0_<digest>``."""
        gpu = re.sub(r"[^A-Za-z0-9.]+", "-", self.gpu_name).strip("-") or "gpu"
        shape = "x".join(str(d) for d in self.input_shape[-2:])
        sm = self.compute_capability.replace(".", "")
        return f"upn_{shape}_{self.precision}_{gpu}_sm{sm}_trt{self.tensorrt_version}_{self.digest()}"


def package_version() -> str:
    """chatrex_ros's installed version (a source checkout that is not installed falls back to ``__version__``)."""
    try:
        return importlib.metadata.version("chatrex_ros")
    except importlib.metadata.PackageNotFoundError:
        from chatrex_ros import __version__

        return str(__version__)


@dataclass(frozen=True)
class CachedEngine:
    """The engine file, its sidecar and its lock file for one key."""

    engine_path: Path
    sidecar_path: Path
    lock_path: Path
    key: EngineKey

    def is_valid(self) -> bool:
        """True when the engine exists and the sidecar records exactly this key."""
        if not self.engine_path.is_file() or self.engine_path.stat().st_size == 0 or not self.sidecar_path.is_file():
            return False
        try:
            recorded = json.loads(self.sidecar_path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return bool(recorded == key_record(self.key))

    def store(self, plan: bytes) -> None:
        """Write the plan then the sidecar, each atomically (a crash never leaves a half engine that looks valid)."""
        self.engine_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.engine_path, plan)
        _atomic_write(self.sidecar_path, json.dumps(key_record(self.key), indent=1).encode())


def cache_entry(cache_dir: str | Path, key: EngineKey) -> CachedEngine:
    """The engine, sidecar and lock paths for ``key`` in ``cache_dir`` (``~`` expanded); nothing is touched."""
    stem = key.file_stem()
    directory = Path(cache_dir).expanduser()
    return CachedEngine(directory / f"{stem}.engine", directory / f"{stem}.json", directory / f"{stem}.lock", key)


def ensure_built(entry: CachedEngine, build: Callable[[], bytes], rebuild: bool = False) -> bool:
    """Make ``entry`` valid, calling ``build`` at most once however many processes ask; True when this call built.

    A valid entry is used without locking. Otherwise the first process to get the lock builds and the others,
    once they get it, find the valid entry and use it. With ``rebuild`` the entry is rebuilt even when valid,
    unless another process replaced the engine while this one waited for the lock (it rebuilt it already).
    """
    if not rebuild and entry.is_valid():
        return False
    before = _identity(entry.engine_path)
    entry.engine_path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(entry.lock_path):
        if entry.is_valid() and (not rebuild or _identity(entry.engine_path) != before):
            LOG.info("using %s, built by another process while this one waited", entry.engine_path.name)
            return False
        entry.store(build())
    return True


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``, held for the block (released by closing, also when the process dies).

    The lock file is never deleted: deleting it would let a late process lock a new file while an earlier one
    still holds the old one.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            LOG.info("another process is building %s: waiting for it", path.stem)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the file is replaced (``os.replace`` brings a new inode)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def key_record(key: EngineKey) -> dict[str, object]:
    """The key as JSON-ready data (the sidecar's content and the digest's input)."""
    record = asdict(key)
    record["input_shape"] = list(key.input_shape)
    return record


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file of its own in ``path``'s directory, then rename it over ``path``."""
    fd, temporary = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; the cache may be shared with other users
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
