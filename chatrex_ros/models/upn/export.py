"""ONNX export of the UPN: one static-shape graph per camera resolution, prompt baked in.

Choices (see docs/models.md):
* static (1, 3, H, W) input: the Swin window padding, the shift masks, the level sizes and the sine
  encodings all depend on H, W only, so they fold into constants and TensorRT gets fixed shapes;
* the prompt (fine / coarse) is baked in: the graph has one input (``pixels``) and two outputs
  (``boxes`` (1, Q, 4) normalised cx cy w h, ``logits`` (1, Q, 1)); switching granularity means a second file;
* the TorchScript-based exporter (``dynamo=False``): its node names carry the module path
  (``/model/transformer/query_selection/...``), which TensorRT keeps as layer names, so an fp16 engine can pin
  the proposal generation and the box head to fp32 by name;
* metadata (``custom_metadata_map`` in ONNX Runtime) records prompt, input size and resize rule so the
  runtime backends pre-process exactly like the torch backend.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .artifacts import BOXES_NAME, FP32_NAME_PATTERNS, INPUT_NAME, LOGITS_NAME, METADATA_PREFIX
from .model import UPN

DEFAULT_OPSET = 17


class PromptBakedUPN(nn.Module):
    """``pixels -> (boxes, logits)`` with the granularity prompt fixed, as the exported graph needs."""

    def __init__(self, model: UPN, prompt: str) -> None:
        super().__init__()
        model.transformer.prompt_vector(prompt)  # validate now
        self.model = model
        self.prompt = prompt

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Pixels (B, 3, H, W) normalised -> (boxes (B, Q, 4) normalised cx cy w h, logits (B, Q, 1))."""
        return self.model(pixels, self.prompt)


def export_onnx(
    model: UPN, out_path: str | Path, input_hw: tuple[int, int], prompt: str = "fine", opset: int = DEFAULT_OPSET
) -> Path:
    """Write the ONNX graph of ``model`` for one input size and prompt; returns the path."""
    height, width = input_hw
    if height < 32 or width < 32:
        raise ValueError(f"input size {height}x{width} is too small for the UPN (both sides must be >= 32)")
    tokens = sum(h * w for h, w in _level_sizes(height, width, model.config.patch_size))
    if tokens < model.config.num_queries:
        raise ValueError(f"{height}x{width} gives {tokens} tokens, fewer than the {model.config.num_queries} queries")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = PromptBakedUPN(model.eval(), prompt).eval()
    example = torch.zeros(1, 3, height, width, dtype=torch.float32, device=next(model.parameters()).device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes: intended, shapes are static
        torch.onnx.export(
            wrapper,
            (example,),
            str(out),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[BOXES_NAME, LOGITS_NAME],
            do_constant_folding=True,
        )
    _write_metadata(out, model, (height, width), prompt, opset)
    return out


def _level_sizes(height: int, width: int, patch: int) -> list[tuple[int, int]]:
    h, w = -(-height // patch), -(-width // patch)
    sizes = [(h, w)]
    for _ in range(4):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def _write_metadata(path: Path, model: UPN, input_hw: tuple[int, int], prompt: str, opset: int) -> None:
    import onnx

    graph = onnx.load(str(path))
    values = {
        "variant": model.config.name,
        "prompt": prompt,
        "input_hw": f"{input_hw[0]}x{input_hw[1]}",
        "resize_short": str(model.config.resize_short),
        "resize_max": str(model.config.resize_max),
        "num_queries": str(model.config.num_queries),
        "opset": str(opset),
        "fp32_name_patterns": json.dumps(list(FP32_NAME_PATTERNS)),
    }
    del graph.metadata_props[:]
    for key, value in values.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    onnx.save(graph, str(path))
