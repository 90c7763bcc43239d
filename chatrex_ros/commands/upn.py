"""`chatrex-ros export-upn`, `build-engine`, `convert-upn`: UPN to ONNX, ONNX to TensorRT, .pth to safetensors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatrex_ros.commands.exit_codes import ExitCode

if TYPE_CHECKING:
    from torch import Tensor

EXPECTED_ERRORS = (FileNotFoundError, ImportError, ValueError, RuntimeError)
UNSAFE_LOAD_WARNING = (
    "convert-upn: WARNING: reading {file} with weights_only=False runs any code its pickle holds; "
    "use this only on a file you trust"
)


def register(subparsers: Any) -> None:
    """Add the three subcommands to the main CLI's subparsers."""
    export = subparsers.add_parser(
        "export-upn",
        help="export UPN to ONNX (static shape per camera resolution, prompt baked in)",
        description="Export the UPN to ONNX for one input size and one prompt. The input size is the network's "
        "(after the 800/1333 resize): 750x1333 for 1280x720 or 1920x1080 cameras, 800x1066 for 640x480; "
        "--camera computes it for you.",
    )
    export.add_argument(
        "--checkpoint", required=True, help="upn_large.pth (['model'] state dict) or a .safetensors file"
    )
    size = export.add_mutually_exclusive_group(required=True)
    size.add_argument("--size", help="network input HEIGHTxWIDTH, e.g. 750x1333")
    size.add_argument(
        "--camera", help="camera image WIDTHxHEIGHT, e.g. 1280x720 (the input size follows the resize rule)"
    )
    export.add_argument("--prompt", choices=("fine", "coarse"), default="fine", help="granularity baked into the graph")
    export.add_argument("--variant", default="large", help="'large', 'tiny' or a config JSON in the reference schema")
    export.add_argument("--out", required=True, help="output .onnx path")
    export.add_argument("--opset", type=int, default=17)
    export.set_defaults(func=run_export)

    engine = subparsers.add_parser(
        "build-engine",
        help="build (or rebuild) the cached TensorRT engine of an exported UPN",
        description="Build the TensorRT engine for this GPU, TensorRT version, precision, input shape and ONNX file, "
        "and store it in the cache directory the tensorrt backend reads. Needs pip install chatrex_ros[tensorrt].",
    )
    engine.add_argument("--onnx", required=True, help="file made by export-upn")
    engine.add_argument(
        "--cache-dir",
        default=_default_engine_cache(),
        help="engine cache directory: the node's engine_cache_dir (default %(default)s)",
    )
    from chatrex_ros.models.upn.engine_cache import DEFAULT_PRECISION, PRECISIONS

    engine.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help="engine precision; the default is the node's (precision:=auto), so the node finds this engine "
        "(default %(default)s)",
    )
    engine.add_argument(
        "--gpu-index", type=int, default=0, help="CUDA device to build on: the node's gpu_index (default %(default)s)"
    )
    engine.add_argument("--rebuild", action="store_true", help="build even if a valid cached engine exists")
    engine.set_defaults(func=run_build_engine)

    convert = subparsers.add_parser(
        "convert-upn",
        help="convert a trusted .pth UPN checkpoint that weights-only loading refuses to .safetensors",
        description="Read a .pth with weights_only=False (this RUNS the code its pickle holds: only for a file "
        "you trust), keep the tensors of its 'model' state dict (or of the file itself, when it is a plain "
        "state dict) and write them to safetensors, which every command and node then loads without pickle.",
    )
    convert.add_argument("--checkpoint", required=True, help="the trusted .pth file")
    convert.add_argument("--out", help="output .safetensors path (default: the checkpoint's name with .safetensors)")
    convert.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    convert.set_defaults(func=run_convert)


def _default_engine_cache() -> str:
    """The proposal node's own default, so an engine built here is the one the node finds."""
    from chatrex_ros.node_parameters import ProposalNodeParams, resolved

    return resolved(ProposalNodeParams).engine_cache_dir


def _variant(text: str) -> str | dict[str, Any]:
    if text.endswith(".json"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"config JSON not found: {path}")
        return json.loads(path.read_text())
    return text


def run_export(args: argparse.Namespace) -> int:
    """`export-upn`: load the checkpoint and write the ONNX graph for one input size and prompt."""
    try:
        from chatrex_ros.models.upn.artifacts import CHECKPOINT_HINT, parse_hw, require_file
        from chatrex_ros.models.upn.config import resolve_config
        from chatrex_ros.models.upn.processing import detr_resize_hw

        require_file(args.checkpoint, "UPN checkpoint", CHECKPOINT_HINT)
        config = resolve_config(_variant(args.variant))
        if args.size:
            input_hw = parse_hw(args.size)
        else:
            width, height = parse_hw(args.camera)
            input_hw = detr_resize_hw(height, width, config.resize_short, config.resize_max)
        from chatrex_ros.models.upn.runtime_torch import import_torch

        import_torch()
        from chatrex_ros.models.upn.checkpoint import load_upn_weights
        from chatrex_ros.models.upn.export import export_onnx
        from chatrex_ros.models.upn.model import build_upn

        model = load_upn_weights(build_upn(config), args.checkpoint)
        out = export_onnx(model, args.out, input_hw, args.prompt, args.opset)
    except EXPECTED_ERRORS as error:
        print(f"export-upn: {error}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"wrote {out} (input 1x3x{input_hw[0]}x{input_hw[1]}, prompt {args.prompt}, variant {config.name})")
    return ExitCode.OK


def run_build_engine(args: argparse.Namespace) -> int:
    """`build-engine`: build or reuse the cached TensorRT engine for an exported ONNX file."""
    try:
        from chatrex_ros.models.upn.runtime_tensorrt import ensure_engine

        entry = ensure_engine(args.onnx, args.cache_dir, args.precision, args.rebuild, args.gpu_index)
    except EXPECTED_ERRORS as error:
        print(f"build-engine: {error}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"engine {entry.engine_path}")
    return ExitCode.OK


def run_convert(args: argparse.Namespace) -> int:
    """`convert-upn`: the one place a pickle is loaded with ``weights_only=False``, on the user's say-so."""
    source = Path(args.checkpoint).expanduser()
    out = Path(args.out).expanduser() if args.out else source.with_suffix(".safetensors")
    problem = _convert_problem(source, out, args.force)
    if problem:
        print(f"convert-upn: {problem}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        from chatrex_ros.models.upn.runtime_torch import import_torch

        torch = import_torch()
        from safetensors.torch import save_file
    except ImportError as error:
        print(f"convert-upn: {error}", file=sys.stderr)
        return ExitCode.FAILED
    print(UNSAFE_LOAD_WARNING.format(file=source), file=sys.stderr)
    try:
        loaded = torch.load(str(source), map_location="cpu", weights_only=False)
    except Exception as error:  # whatever the pickle's own code raises (a missing module, a corrupt file, ...)
        print(f"convert-upn: cannot read {source} as a PyTorch checkpoint: {_one_line(error)}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        tensors, ignored = _state_dict_tensors(loaded)
    except ValueError as error:
        print(f"convert-upn: {source}: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    partial = out.with_name(out.name + ".partial")
    try:  # write beside and rename: an interrupted run never leaves a truncated file under the real name
        save_file(_unshared(tensors), str(partial), metadata={"format": "pt"})
        partial.replace(out)
    except Exception as error:  # OSError, or safetensors' own SafetensorError for a failed write
        partial.unlink(missing_ok=True)
        print(f"convert-upn: cannot write {out}: {_one_line(error)}", file=sys.stderr)
        return ExitCode.FAILED
    size_mb = out.stat().st_size / 1e6
    print(
        f"wrote {out}: {len(tensors)} tensors, {size_mb:.1f} MB; "
        f"ignored non-tensor entries: {', '.join(ignored) if ignored else 'none'}"
    )
    return ExitCode.OK


def _convert_problem(source: Path, out: Path, force: bool) -> str | None:
    """Why the conversion must not start (before anything is read), or None."""
    if not source.is_file():
        return f"checkpoint not found: {source}"
    if source.suffix == ".safetensors":
        return f"{source} is already a safetensors file: pass it as the checkpoint directly"
    if out.exists() and out.resolve() == source.resolve():
        return f"--out {out} is the checkpoint itself"
    if out.exists() and not force:
        return f"{out} exists: pass --force to overwrite it"
    if out.is_dir():
        return f"--out {out} is a directory"
    return None


def _state_dict_tensors(loaded: object) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors of ``loaded["model"]`` (or of ``loaded`` itself), and the names of every entry left out."""
    import torch

    if not isinstance(loaded, Mapping):
        raise ValueError(f"expected a state dict or {{'model': state_dict}}, got {type(loaded).__name__}")
    ignored: list[str] = []
    state: Mapping[Any, Any] = loaded
    if isinstance(loaded.get("model"), Mapping):
        state = loaded["model"]
        ignored = [str(key) for key in loaded if key != "model"]
    tensors: dict[str, Tensor] = {}
    for key, value in state.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            tensors[key] = value
        else:
            ignored.append(f"{key} ({type(value).__name__})")
    if not tensors:
        raise ValueError("holds no tensors: expected a state dict or {'model': state_dict}")
    return tensors, ignored


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors with one storage each: safetensors refuses aliased or strided ones.

    The official UPN file stores the one shared box MLP under several names, all views of the same storage;
    each later alias becomes its own copy (the loader checks that aliases agree, so copies are equivalent).
    """
    seen: set[int] = set()
    result: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        pointer = tensor.untyped_storage().data_ptr()
        if (pointer and pointer in seen) or not tensor.is_contiguous():
            tensor = tensor.clone().contiguous()
        seen.add(tensor.untyped_storage().data_ptr())
        result[key] = tensor
    return result


def _one_line(error: BaseException) -> str:
    """``Type: first line`` of an exception, for the one-line error a command prints."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
