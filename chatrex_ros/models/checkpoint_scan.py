"""What a remote-code checkpoint needs beyond its own directory, found by reading it, never by running it.

LLaVA-style checkpoints (ChatRex-7B among them) build sub-models by hub id while they are constructed, e.g. a
CLIP vision tower and its image processor from ``openai/clip-vit-large-patch14-336``, and import packages
that transformers does not bring (``timm``, ``open_clip``, ``torchvision``). Offline, the first such call
fails deep inside ``from_pretrained`` with a message about the network. :func:`scan_checkpoint` parses the
checkpoint's ``*.py`` files (:mod:`ast`: nothing is imported or executed) and its JSON configs, so start-up
and ``chatrex-ros doctor`` can say beforehand which hub repositories are missing from the local cache and
which imports are not installed, each with the command that fixes it.

Hub ids are collected where code or config names a model: the first argument (or ``repo_id``/
``pretrained_model_name_or_path``) of ``*.from_pretrained``/``hf_hub_download``/``snapshot_download`` calls,
and string values bound to names like ``vision_tower`` or ``*_name_or_path``. A string that names a directory
inside the checkpoint is local, not a hub id.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
MODEL_NAME_KEY = re.compile(r"(vision_tower|image_tower|name_or_path|model_name|pretrained|processor|encoder)", re.I)
LOADER_CALLS = frozenset({"from_pretrained", "hf_hub_download", "snapshot_download"})
REPO_KEYWORDS = frozenset({"repo_id", "pretrained_model_name_or_path", "model_name_or_path"})
# Import name -> pip distribution, where they differ (and torchvision's caveat: it must match the torch build).
PIP_NAMES = {
    "PIL": "pillow",
    "cv2": "opencv-contrib-python-headless",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "open_clip": "open_clip_torch",
    "flash_attn": "flash-attn",
}
OPTIONAL_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def hub_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache."""
    env = os.environ if environ is None else environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = Path(env["HF_HOME"]).expanduser() if env.get("HF_HOME") else Path("~/.cache/huggingface").expanduser()
    return home / "hub"


def is_cached(repo_id: str, cache: Path) -> bool:
    """Whether the hub cache holds a snapshot of ``repo_id`` with files in it (the cache's documented layout)."""
    snapshots = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(revision.is_dir() and any(revision.iterdir()) for revision in snapshots.iterdir())


@dataclass(frozen=True)
class CheckpointScan:
    """What the checkpoint's code and configs name: hub ids (with where) and top-level imports."""

    directory: Path
    hub_ids: dict[str, list[str]] = field(default_factory=dict)  # id -> ["modeling_x.py:12", "config.json"]
    imports: dict[str, list[str]] = field(default_factory=dict)  # module -> where it is imported unconditionally
    optional_imports: dict[str, list[str]] = field(default_factory=dict)  # inside try/except ImportError
    unreadable: list[str] = field(default_factory=list)  # files that would not parse

    def missing_hub_ids(self, cache: Path | None = None) -> list[str]:
        """The hub ids with no snapshot in the local cache."""
        cache = hub_cache_dir() if cache is None else cache
        return sorted(repo for repo in self.hub_ids if not is_cached(repo, cache))

    def missing_imports(self) -> list[str]:
        """The unconditional imports that are not installed (``find_spec`` looks, it does not import)."""
        return sorted(name for name in self.imports if not _installed(name))

    def hub_problems(self, cache: Path | None = None) -> list[str]:
        """One line per hub id missing from the cache, with the commands that fetch it."""
        cache = hub_cache_dir() if cache is None else cache
        return [
            f"the checkpoint's code loads {repo} from the hub ({', '.join(self.hub_ids[repo])}) and it is not in "
            f"the cache {cache}: on a machine with network run `hf download {repo}` (older huggingface_hub: "
            f"`huggingface-cli download {repo}`) and copy its models--{repo.replace('/', '--')} folder into {cache}"
            ", or allow the download with allow_hub_download:=true"
            for repo in self.missing_hub_ids(cache)
        ]

    def import_problem(self) -> str:
        """The imports that are not installed, where, and the pip command ('' when every one is installed)."""
        missing = self.missing_imports()
        if not missing:
            return ""
        where = "; ".join(f"{name}: {', '.join(self.imports[name])}" for name in missing)
        caveat = " (torchvision: the build that matches your torch)" if "torchvision" in missing else ""
        return (
            f"the checkpoint's code imports {', '.join(missing)}, not installed ({where}): "
            f"pip install {' '.join(pip_name(name) for name in missing)}{caveat}"
        )

    def problems(self, cache: Path | None = None) -> list[str]:
        """Every problem, one line each with its fix; empty when the checkpoint can load offline."""
        lines = self.hub_problems(cache)
        if problem := self.import_problem():
            lines.append(problem)
        return lines + [f"cannot parse {name} of the checkpoint (not checked)" for name in self.unreadable]


def pip_name(module: str) -> str:
    """The pip distribution that provides top-level module ``module``."""
    return PIP_NAMES.get(module, module.replace("_", "-"))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def scan_checkpoint(directory: str | os.PathLike[str]) -> CheckpointScan:
    """Scan the checkpoint's ``*.py`` (top level and sub-folders) and JSON configs; reads, never executes."""
    root = Path(directory)
    scan = CheckpointScan(root)
    own_modules = {path.stem for path in root.rglob("*.py")} | {p.name for p in root.iterdir() if p.is_dir()}
    for path in sorted(root.rglob("*.py")):
        name = str(path.relative_to(root))
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=name)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            scan.unreadable.append(name)
            continue
        for repo, line in _hub_ids_in_code(tree):
            _note(scan.hub_ids, repo, f"{name}:{line}", root)
        for module, line, optional in _imports(tree):
            if module in own_modules or module in sys.stdlib_module_names:
                continue
            (scan.optional_imports if optional else scan.imports).setdefault(module, []).append(f"{name}:{line}")
    for config in CONFIG_FILES:
        path = root / config
        if not path.is_file():
            continue
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            scan.unreadable.append(config)
            continue
        for repo in _hub_ids_in_config(document):
            _note(scan.hub_ids, repo, config, root)
    for module in list(scan.optional_imports):
        if module in scan.imports:  # imported unconditionally somewhere else too
            del scan.optional_imports[module]
    return scan


def _note(found: dict[str, list[str]], candidate: str, where: str, root: Path) -> None:
    """Record ``candidate`` as a hub id unless it is not one (a local folder of the checkpoint, a path)."""
    if HUB_ID.match(candidate) and not (root / candidate).exists() and where not in found.get(candidate, []):
        found.setdefault(candidate, []).append(where)


def _string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _call_name(node: ast.Call) -> str:
    function = node.func
    if isinstance(function, ast.Attribute):
        return function.attr
    return function.id if isinstance(function, ast.Name) else ""


def _target_names(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.Attribute):
        yield node.attr
    elif isinstance(node, (ast.Tuple, ast.List)):
        for element in node.elts:
            yield from _target_names(element)


def _hub_ids_in_code(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(candidate, line) for model names in loader calls, model-name keywords, defaults and assignments."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            is_loader = _call_name(node) in LOADER_CALLS
            if is_loader and node.args and (value := _string(node.args[0])):
                yield value, node.lineno
            for keyword in node.keywords:
                named = keyword.arg is not None and (keyword.arg in REPO_KEYWORDS or MODEL_NAME_KEY.search(keyword.arg))
                if (is_loader or named) and (value := _string(keyword.value)):
                    yield value, node.lineno
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = _string(node.value)
            if value and any(MODEL_NAME_KEY.search(name) for t in targets for name in _target_names(t)):
                yield value, node.lineno
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            positional = arguments.posonlyargs + arguments.args
            pairs = list(zip(positional[len(positional) - len(arguments.defaults) :], arguments.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True) if d is not None]
            for argument, default in pairs:
                if MODEL_NAME_KEY.search(argument.arg) and (value := _string(default)):
                    yield value, node.lineno
        elif isinstance(node, ast.Dict):
            for key, item in zip(node.keys, node.values, strict=True):
                name = _string(key)
                if name and MODEL_NAME_KEY.search(name) and (value := _string(item)):
                    yield value, node.lineno


def _hub_ids_in_config(document: Any, key: str = "") -> Iterator[str]:
    """String values under model-name keys, at any depth of a JSON config."""
    if isinstance(document, dict):
        for name, value in document.items():
            yield from _hub_ids_in_config(value, str(name))
    elif isinstance(document, list):
        for value in document:
            yield from _hub_ids_in_config(value, key)
    elif isinstance(document, str) and MODEL_NAME_KEY.search(key):
        yield document


def _imports(tree: ast.AST) -> Iterator[tuple[str, int, bool]]:
    """(top-level module, line, optional) for absolute imports; optional = inside try/except ImportError."""
    optional_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(handler) for handler in node.handlers):
            for statement in node.body:
                optional_lines.update(n.lineno for n in ast.walk(statement) if hasattr(n, "lineno"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno, node.lineno in optional_lines
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno, node.lineno in optional_lines


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in OPTIONAL_IMPORT_ERRORS for n in names)
