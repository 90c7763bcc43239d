"""`chatrex-ros export-upn` and `chatrex-ros build-engine`: UPN checkpoint to ONNX, ONNX to a TensorRT engine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from chatrex_ros.commands.exit_codes import ExitCode

EXPECTED_ERRORS = (FileNotFoundError, ImportError, ValueError, RuntimeError)


def register(subparsers: Any) -> None:
    """Add the two subcommands to the main CLI's subparsers."""
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
    engine.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    engine.add_argument("--rebuild", action="store_true", help="build even if a valid cached engine exists")
    engine.set_defaults(func=run_build_engine)


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

        entry = ensure_engine(args.onnx, args.cache_dir, args.precision, rebuild=args.rebuild)
    except EXPECTED_ERRORS as error:
        print(f"build-engine: {error}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"engine {entry.engine_path}")
    return ExitCode.OK
