"""ChatRex-7B as a :class:`~chatrex_ros.models.base.LanguageBackend`, loaded the way its authors prescribe.

The official checkpoint (IDEA-Research/ChatRex-7B) ships its model and processor as *remote code*: Python
files inside the checkpoint that ``transformers`` imports and runs. We load it only from a local directory
(no hub access), only when the caller explicitly trusts that code, and call exactly the documented API:

    processor.process(image=PIL.Image, question=str, bbox=[[x1, y1, x2, y2], ...]) -> dict of tensors
    model.generate(inputs, gen_config=GenerationConfig(...), tokenizer=processor.tokenizer) -> str

The box list handed to ``process`` is the caller's list, in the caller's order: the answer's ``<objK>``
indices are resolved against that same list, so this module never sorts, filters or clips it.

Start-up errors (all raised by the constructor, before any weights are read):

* ``ValueError``: a bad argument (device string, dtype name, max_boxes) or a directory that is not a ChatRex
  checkpoint (unreadable ``config.json``, no ``auto_map``).
* ``FileNotFoundError``: the model directory, or files in it (config, weights, tokenizer, remote code);
  :class:`HubFilesMissing`: hub repositories the checkpoint's code loads by id that are not in the local
  Hugging Face cache, while ``allow_hub_download`` is off (:mod:`~chatrex_ros.models.checkpoint_scan`).
* ``ImportError``: torch / transformers missing, a transformers version outside
  :data:`SUPPORTED_TRANSFORMERS`, or a package the checkpoint's own code imports (e.g. torchvision), found
  by reading that code before it runs.
* :class:`RemoteCodeRefused` (a ``RuntimeError``): ``trust_remote_code`` was not set.
* ``RuntimeError``: CUDA requested but unavailable; the checkpoint failed to load.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatrex_ros.core.types import MAX_PROPOSALS
from chatrex_ros.models.checkpoint_scan import CheckpointScan, hub_cache_dir, scan_checkpoint

SUPPORTED_TRANSFORMERS = ">=4.44.2,<4.46"
"""PEP 440 range of transformers the ChatRex remote code is supported with (the one pin; see
docs/models.md for the evidence). The ``[chatrex]`` extra in pyproject.toml repeats this string."""

INSTALL_HINT = "pip install 'chatrex_ros[chatrex]'"
DOWNLOAD_HINT = (
    "download IDEA-Research/ChatRex-7B (about 16 GB, IDEA License 1.0, non-commercial) on a machine with "
    "network access, e.g. `hf download IDEA-Research/ChatRex-7B --local-dir <dir>` (older huggingface_hub: "
    "`huggingface-cli download`), copy it "
    "here and point model_path at it; this package never downloads weights"
)
AUTHORS_DTYPE = "autocast-bfloat16"
"""float32 weights run under bfloat16 autocast: how the authors' inference code loads ChatRex-7B."""
DTYPES = ("float32", "float16", "bfloat16", AUTHORS_DTYPE)
HALF_DTYPES = ("float16", "bfloat16")
_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class RemoteCodeRefused(RuntimeError):
    """The checkpoint needs its own Python code executed and the caller has not allowed it."""


class HubFilesMissing(FileNotFoundError):
    """The checkpoint's code loads hub repositories by id that the local cache lacks, and downloads are off."""


@dataclass(frozen=True)
class LoadPlan:
    """What the start-up checks resolved: everything needed to load, nothing loaded yet."""

    model_path: Path
    device: str
    dtype: str
    transformers_version: str
    to_download: tuple[str, ...] = ()  # hub ids the checkpoint's code will fetch (allow_hub_download only)


# --------------------------------------------------------------------------- start-up checks


def resolve_dtype(dtype: str | None, device: str) -> str:
    """None -> bfloat16 on CUDA (half the weight memory), float32 on CPU (half precision is slow there).

    The authors' own mode, :data:`AUTHORS_DTYPE` (float32 weights, bfloat16 autocast), is a choice: it is what
    their evaluation ran, at twice the weight memory (about 30 GB for the 7B model).
    """
    if dtype is None:
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or None for the device default), got {dtype!r}")
    return dtype


def check_device_name(device: str) -> str:
    """Syntax only ('cpu', 'cuda', 'cuda:N'); availability is :func:`check_device_available`."""
    if not isinstance(device, str) or not _DEVICE_PATTERN.match(device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def check_transformers_version(version: str, supported: str | None = None) -> str:
    """Raise ImportError unless ``version`` is inside ``supported`` (default :data:`SUPPORTED_TRANSFORMERS`)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    supported = SUPPORTED_TRANSFORMERS if supported is None else supported
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise ImportError(
            f"cannot parse the installed transformers version {version!r}; "
            f"reinstall it: pip install 'transformers{supported}'"
        ) from None
    if parsed not in SpecifierSet(supported):
        raise ImportError(
            f"transformers {version} is installed, but the ChatRex remote code is supported with "
            f"transformers{supported} only (it was written for 4.44; see docs/models.md). "
            f"Run: pip install 'transformers{supported}'   (or {INSTALL_HINT})"
        )
    return version


def import_dependencies(allow_hub_download: bool = False) -> tuple[Any, Any]:
    """Torch and transformers, imported late (they are heavy) and offline; clear errors when missing."""
    if not allow_hub_download:
        # Read by huggingface_hub at import: no hub calls even if some code path asks for one.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"the chatrex language backend needs PyTorch: {INSTALL_HINT} ({error})") from error
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            f"the chatrex language backend needs transformers{SUPPORTED_TRANSFORMERS}: {INSTALL_HINT} ({error})"
        ) from error
    check_transformers_version(transformers.__version__)
    return torch, transformers


def _remote_code_modules(auto_map: dict[str, Any]) -> set[str]:
    """File names of the checkpoint's own modules named by ``auto_map`` ('modeling_x.Class' -> 'modeling_x.py')."""
    modules = set()
    for reference in auto_map.values():
        for entry in reference if isinstance(reference, (list, tuple)) else [reference]:
            if isinstance(entry, str) and "--" not in entry and "." in entry:  # 'repo--mod.Class' lives elsewhere
                modules.add(entry.rsplit(".", 1)[0].replace(".", "/") + ".py")
    return modules


def _weight_files(directory: Path) -> tuple[list[str], list[str]]:
    """(present, missing) safetensors files: one model.safetensors, or an index and every shard it names."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{index} is not a valid safetensors index ({error})") from None
        shards = sorted(set(weight_map.values()))
        return [s for s in shards if (directory / s).is_file()], [s for s in shards if not (directory / s).is_file()]
    if (directory / "model.safetensors").is_file():
        return ["model.safetensors"], []
    return [], ["model.safetensors (or model.safetensors.index.json and its shards)"]


def check_model_dir(model_path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory, resolved; every file the loader will need is present.

    One error lists everything missing, so a half-copied download is fixed in one go.
    """
    if not str(model_path).strip():
        raise FileNotFoundError(f"model_path is empty: {DOWNLOAD_HINT}")
    directory = Path(model_path).expanduser().resolve()
    if not directory.exists():
        raise FileNotFoundError(f"ChatRex model directory {directory} does not exist: {DOWNLOAD_HINT}")
    if not directory.is_dir():
        raise FileNotFoundError(f"ChatRex model_path {directory} is a file; it must be the checkpoint directory")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no config.json, so it is not a checkpoint directory: {DOWNLOAD_HINT}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}); re-download it") from None
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not isinstance(auto_map, dict) or "AutoModelForCausalLM" not in auto_map:
        raise ValueError(
            f"{config_path} has no auto_map entry for AutoModelForCausalLM: this is not the ChatRex checkpoint "
            "(its model class comes from the checkpoint's own code)"
        )
    missing = [name for name in sorted(_remote_code_modules(auto_map)) if not (directory / name).is_file()]
    missing += _weight_files(directory)[1]
    if not (directory / "tokenizer_config.json").is_file():
        missing.append("tokenizer_config.json")
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        missing.append(" or ".join(_TOKENIZER_FILES))
    if missing:
        raise FileNotFoundError(f"ChatRex model directory {directory} is incomplete, missing: {', '.join(missing)}")
    return directory


def check_remote_code_trusted(trust_remote_code: bool, directory: Path) -> None:
    """Refuse unless the caller said yes, explicitly (a truthy string like 'false' does not count)."""
    if trust_remote_code is not True:
        raise RemoteCodeRefused(
            f"the ChatRex checkpoint in {directory} runs its own Python code (the *.py files next to its "
            "weights) inside this process, with this process's permissions. Only allow that for a checkpoint "
            "from a source you trust and have not let others modify. To allow it, set the node parameter "
            "trust_remote_code:=true (ROS; with `chatrex-ros up`: --set language_node.trust_remote_code=true; with "
            "`chatrex-ros eval`: --language-param trust_remote_code=true) or pass "
            "ChatRexBackend(..., trust_remote_code=True) (Python)."
        )


def check_hub_ids(scan: CheckpointScan, allow_hub_download: bool) -> tuple[str, ...]:
    """Raise (downloads off) for hub ids the checkpoint's code loads that the local cache lacks.

    Returns the hub ids that will be downloaded (only when ``allow_hub_download``).
    """
    cache = hub_cache_dir()
    missing = scan.missing_hub_ids(cache)
    if missing and not allow_hub_download:
        raise HubFilesMissing("; ".join(scan.hub_problems(cache)))
    return tuple(missing)


def check_code_imports(scan: CheckpointScan) -> None:
    """ImportError naming what the checkpoint's code imports and is not installed, with the pip command."""
    if problem := scan.import_problem():
        raise ImportError(problem)


def check_device_available(torch: Any, device: str) -> None:
    """RuntimeError for CUDA that this torch cannot reach (CPU-only build, no GPU, index out of range)."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        build = "a CPU-only PyTorch build" if torch.version.cuda is None else "no visible GPU"
        raise RuntimeError(
            f"device {device!r} requested but CUDA is not available ({build}). Use a CUDA machine, or set "
            "device:=cpu (a 7B model on CPU needs ~30 GB RAM in float32 and minutes per answer)"
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        visible = torch.cuda.device_count()
        raise RuntimeError(f"device {device!r} requested but only {visible} CUDA device(s) are visible")


def plan_load(
    model_path: str | os.PathLike[str],
    device: str = "cuda",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    allow_hub_download: bool = False,
) -> LoadPlan:
    """Every start-up check, in order (arguments, files, trust, what the code needs, dependencies, device).

    Reads no weights and runs none of the checkpoint's code (its needs come from reading it).

    Nodes and the CLI call this (through the constructor) so a misconfiguration stops start-up with one
    clear error instead of failing on the first query. Files and trust come before the imports, so they
    are reported even where torch/transformers are not installed yet.
    """
    device = check_device_name(device)
    dtype = resolve_dtype(dtype, device)
    directory = check_model_dir(model_path)
    check_remote_code_trusted(trust_remote_code, directory)
    if allow_hub_download is not True and allow_hub_download is not False:
        raise ValueError(f"allow_hub_download must be true or false, got {allow_hub_download!r}")
    scan = scan_checkpoint(directory)
    to_download = check_hub_ids(scan, allow_hub_download)
    torch, transformers = import_dependencies(allow_hub_download)
    check_code_imports(scan)
    check_device_available(torch, device)
    return LoadPlan(directory, device, dtype, transformers.__version__, to_download)


# --------------------------------------------------------------------------- the backend


class ChatRexBackend:
    """ChatRex-7B behind :class:`~chatrex_ros.models.base.LanguageBackend` (see the module docstring)."""

    name = "chatrex"

    def __init__(
        self,
        model_path: str,
        device: str = "cuda",
        dtype: str | None = None,
        trust_remote_code: bool = False,
        max_boxes: int = MAX_PROPOSALS,
        allow_hub_download: bool = False,
    ) -> None:
        if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or not 1 <= max_boxes <= MAX_PROPOSALS:
            raise ValueError(
                f"max_boxes must be an int in 1..{MAX_PROPOSALS} (ChatRex has {MAX_PROPOSALS} index tokens), "
                f"got {max_boxes!r}"
            )
        plan = plan_load(model_path, device, dtype, trust_remote_code, allow_hub_download)
        self.model_path = plan.model_path
        self.downloaded = plan.to_download
        self.device = plan.device
        self.dtype = plan.dtype
        self.max_boxes = max_boxes
        self.transformers_version = plan.transformers_version
        self._torch, transformers = import_dependencies(allow_hub_download)
        self._generation_config_class = transformers.GenerationConfig
        # One query at a time: generation is not re-entrant-safe on one model and two would double memory.
        self._lock = threading.Lock()
        self.processor, self.model = self._load(transformers)

    def _load(self, transformers: Any) -> tuple[Any, Any]:
        """AutoProcessor + AutoModelForCausalLM with remote code, local files only, in ``self.dtype``."""
        torch = self._torch
        path = str(self.model_path)
        common = {"trust_remote_code": True, "local_files_only": True}
        try:
            processor = transformers.AutoProcessor.from_pretrained(path, **common)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path, use_safetensors=True, torch_dtype=getattr(torch, self._weights_dtype()), **common
            )
            model = model.to(self.device).eval()
        except ImportError as error:
            raise ImportError(
                f"the ChatRex checkpoint's own code in {path} needs a package that is not installed: {error} "
                "(the upstream environment installs torchvision and timm beside transformers; install the "
                "torchvision build that matches your torch)"
            ) from error
        except Exception as error:
            raise RuntimeError(
                f"loading the ChatRex checkpoint from {path} failed ({type(error).__name__}: {error}). "
                f"Check that the download is complete and transformers{SUPPORTED_TRANSFORMERS} is installed."
            ) from error
        if not callable(getattr(processor, "process", None)):
            raise RuntimeError(
                f"the processor in {path} ({type(processor).__name__}) has no process(); not a ChatRex checkpoint"
            )
        return processor, model

    # ---- pre-process

    def _pil_image(self, image_rgb: Any) -> Any:
        """(H, W, 3) uint8 RGB array or PIL image -> PIL RGB (what the official processor takes)."""
        from PIL import Image

        if isinstance(image_rgb, Image.Image):
            return image_rgb if image_rgb.mode == "RGB" else image_rgb.convert("RGB")
        array = np.asarray(image_rgb)
        if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"expected a non-empty (H, W, 3) RGB image, got shape {array.shape}")
        if array.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image, got dtype {array.dtype}")
        return Image.fromarray(np.ascontiguousarray(array))  # uint8 (H, W, 3) is RGB

    def _box_list(self, boxes_xyxy: np.ndarray | Sequence[Sequence[float]]) -> list[list[float]]:
        """Validated boxes as python floats, in the given order: row K is the model's ``<objK>``."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes_xyxy must have shape (N, 4), got {boxes.shape}")
        if boxes.shape[0] == 0:
            raise ValueError("boxes_xyxy is empty: ChatRex answers with box indices and needs at least one box")
        if boxes.shape[0] > self.max_boxes:
            raise ValueError(
                f"{boxes.shape[0]} boxes given but ChatRex takes at most {self.max_boxes}; select the top "
                f"{self.max_boxes} before asking (the backend never drops boxes itself: indices would shift)"
            )
        if not np.isfinite(boxes).all():
            rows = sorted(set(np.nonzero(~np.isfinite(boxes))[0].tolist()))
            raise ValueError(f"boxes_xyxy has non-finite values at rows {rows}")
        inverted = np.nonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0]
        if inverted.size:
            raise ValueError(f"boxes_xyxy rows {inverted.tolist()} have x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)")
        return boxes.tolist()

    def _prepare(self, image_rgb: Any, boxes_xyxy: Any, prompt: str) -> dict[str, Any]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        image = self._pil_image(image_rgb)
        bbox = self._box_list(boxes_xyxy)
        inputs = self.processor.process(image=image, question=prompt, bbox=bbox)
        torch = self._torch
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in dict(inputs).items()}

    # ---- infer

    def _generation_config(self, max_new_tokens: int) -> Any:
        """Greedy, as the authors evaluate; eos/pad from the checkpoint's tokenizer."""
        tokenizer = self.processor.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return self._generation_config_class(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )

    def _weights_dtype(self) -> str:
        return "float32" if self.dtype == AUTHORS_DTYPE else self.dtype

    def _autocast(self) -> Any:
        """The authors run under bf16 autocast; half-precision weights with float32 inputs need it too."""
        if self.dtype == AUTHORS_DTYPE:
            compute = "bfloat16"
        elif self.dtype in HALF_DTYPES:
            compute = self.dtype
        else:
            return nullcontext()
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return self._torch.autocast(device_type=device_type, dtype=getattr(self._torch, compute))

    def _infer(self, inputs: dict[str, Any], max_new_tokens: int) -> Any:
        config = self._generation_config(max_new_tokens)
        with self._torch.inference_mode(), self._autocast():
            return self.model.generate(inputs, gen_config=config, tokenizer=self.processor.tokenizer)

    # ---- decode

    @staticmethod
    def _decode(output: Any) -> str:
        """The official generate returns the decoded string; accept a one-element batch of it too."""
        if isinstance(output, (list, tuple)) and len(output) == 1:
            output = output[0]
        if not isinstance(output, str):
            raise RuntimeError(
                f"the checkpoint's generate() returned {type(output).__name__}, expected the decoded str"
            )
        return output

    def generate(self, image_rgb: np.ndarray, boxes_xyxy: np.ndarray, prompt: str, max_new_tokens: int = 512) -> str:
        """Raw answer text for ``prompt`` about ``image_rgb`` and the ordered ``boxes_xyxy`` (<= max_boxes).

        Nothing is stripped: the protocol parser needs the ``<ground>``/``<objects>``/``<objK>`` tokens.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        with self._lock:
            inputs = self._prepare(image_rgb, boxes_xyxy, prompt)
            return self._decode(self._infer(inputs, max_new_tokens))

    def describe(self) -> dict[str, str]:
        """For diagnostics and logs: what is loaded, where, and with which library version."""
        return {
            "backend": self.name,
            "model_path": str(self.model_path),
            "model_class": type(self.model).__name__,
            "device": self.device,
            "dtype": self.dtype,
            "max_boxes": str(self.max_boxes),
            "transformers": self.transformers_version,
            "downloaded_from_hub": ", ".join(self.downloaded) or "nothing",
        }
