"""The ChatRex protocol for a general VLM behind an OpenAI-compatible server: the request text, and its answers.

A served VLM (Qwen2.5-VL, Llama 3.2 Vision, ...) was not trained on ChatRex's index tokens, so it is told the
protocol in words: the frame's proposals are listed in order as ``<objK>: [box]``, followed by the ChatRex question
of the task (:data:`chatrex_ros.core.protocol.PROMPT_TEMPLATES`, the one home of the task wording), and it is asked
to answer in the ChatRex grammar. What comes back is normalised into that grammar here, so parsing and resolution
stay :func:`chatrex_ros.core.protocol.parse_answer`'s, against the same ordered list:

* the ChatRex grammar (``<ground>cup</ground><objects><obj2></objects>``) passes as it is;
* boxes named without the grammar (``<objK>``, ``objK``, ``[objK]``, ``obj K``) are the answer all the same: they
  become one group with an empty phrase after the text (detections labelled ``''``), and the text says ``box K``;
* a JSON list of boxes (``[{"bbox_2d": [x1, y1, x2, y2], "label": "cup"}]``, Qwen's grounding format, possibly in
  a ```json fence) is mapped to the proposal that overlaps each box best, if its IoU reaches ``match_iou``; a box
  that overlaps none is rejected (no detection), never snapped to a far proposal;
* an answer naming nothing ("there is no such object") resolves to zero detections: a rejection, not a guess.

Boxes are written in one of :data:`BOX_FORMATS`, the convention the model family was trained on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np

from chatrex_ros.core.proposals import box_iou

BOX_FORMATS = ("pixel", "norm1000", "norm1")
"""How boxes are written to and read from the model: ``pixel`` (x1, y1, x2, y2 in the image's pixels; Qwen2.5-VL),
``norm1000`` (0..1000 of the width/height; Qwen2-VL, InternVL, CogVLM), ``norm1`` (0..1 fractions)."""

DEFAULT_MATCH_IOU = 0.5
"""A box the model draws is the proposal it overlaps best, if their IoU reaches this; otherwise it is rejected."""

VLM_SYSTEM_PROMPT = (
    "You answer questions about an image by referring to numbered candidate boxes. The user lists the boxes as "
    "<objK>: [x1, y1, x2, y2]. Refer to objects ONLY by these tokens. Write each object you mention as "
    "<ground>phrase</ground><objects><objA><objB></objects>, listing every box that shows it, for example: "
    "There are two <ground>cups</ground><objects><obj3><obj7></objects> on the table. If nothing in the image "
    "matches, say so and write no box tokens. Never invent coordinates or tokens that are not in the list."
)
"""The instruction that teaches a general VLM the ChatRex answer grammar (sent as the system message)."""

_COORDINATES = {
    "pixel": "pixel coordinates of the {width}x{height} image",
    "norm1000": "coordinates scaled to 0-1000 of the image's width and height",
    "norm1": "coordinates as fractions 0-1 of the image's width and height",
}

_BARE_INDEX_RE = re.compile(r"(?<![<\w])\[?obj\s?(\d{1,2})\]?(?![\w>])", re.IGNORECASE)
_GRAMMAR_RE = re.compile(r"<ground>|<objects>")
_TOKEN_INDEX_RE = re.compile(r"<obj(\d{1,3})>")
_JSON_BLOCK_RE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def check_box_format(box_format: str) -> str:
    """``box_format`` if it is one of :data:`BOX_FORMATS`, else ValueError."""
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {', '.join(BOX_FORMATS)}, got {box_format!r}")
    return box_format


def format_box(box: Sequence[float], width: int, height: int, box_format: str) -> str:
    """One proposal box as the model reads it (integers for pixel/norm1000, three decimals for norm1)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if box_format == "pixel":
        return f"[{round(x1)}, {round(y1)}, {round(x2)}, {round(y2)}]"
    if box_format == "norm1000":
        return (
            f"[{round(1000 * x1 / width)}, {round(1000 * y1 / height)}, "
            f"{round(1000 * x2 / width)}, {round(1000 * y2 / height)}]"
        )
    check_box_format(box_format)
    return f"[{x1 / width:.3f}, {y1 / height:.3f}, {x2 / width:.3f}, {y2 / height:.3f}]"


def to_pixels(values: Sequence[float], width: int, height: int, box_format: str) -> tuple[float, float, float, float]:
    """A box the model wrote, in ``box_format``, as x1 y1 x2 y2 image pixels (corners sorted)."""
    x1, y1, x2, y2 = (float(v) for v in values)
    if box_format == "norm1000":
        x1, x2, y1, y2 = x1 * width / 1000, x2 * width / 1000, y1 * height / 1000, y2 * height / 1000
    elif box_format == "norm1":
        x1, x2, y1, y2 = x1 * width, x2 * width, y1 * height, y2 * height
    else:
        check_box_format(box_format)
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def vlm_request_text(prompt: str, boxes: np.ndarray, width: int, height: int, box_format: str) -> str:
    """The user message: the ordered proposal list, then the task's ChatRex question (``prompt``)."""
    listing = "\n".join(
        f"<obj{index}>: {format_box(box, width, height, box_format)}" for index, box in enumerate(boxes)
    )
    coordinates = _COORDINATES[check_box_format(box_format)].format(width=width, height=height)
    return f"Candidate boxes ({len(boxes)}, {coordinates}):\n{listing}\n\nQuestion: {prompt}"


def normalise_vlm_answer(
    text: str, boxes: np.ndarray, width: int, height: int, box_format: str, match_iou: float = DEFAULT_MATCH_IOU
) -> str:
    """A served VLM's reply as ChatRex-grammar text for ``parse_answer`` (see the module docstring)."""
    if _GRAMMAR_RE.search(text):
        return text
    drawn = _drawn_boxes(text)
    if drawn is not None:
        return _boxes_to_groups(drawn, boxes, width, height, box_format, match_iou)
    # Tokens (<obj2>) and bare names (obj2, [obj 2]) outside the grammar, in the order the text names them.
    named = sorted(
        [(m.start(), int(m.group(1))) for m in _TOKEN_INDEX_RE.finditer(text)]
        + [(m.start(), int(m.group(1))) for m in _BARE_INDEX_RE.finditer(text)]
    )
    if not named:
        return text  # names nothing: zero detections (a rejection)
    indices = "".join(f"<obj{index}>" for index in dict.fromkeys(index for _, index in named))
    # Named without the grammar, the boxes are still the answer: one group with an empty phrase after the text.
    prose = _BARE_INDEX_RE.sub(lambda m: f"box {m.group(1)}", _TOKEN_INDEX_RE.sub(lambda m: f"box {m.group(1)}", text))
    return f"{prose} <ground></ground><objects>{indices}</objects>"


def _drawn_boxes(text: str) -> list[tuple[str, list[float]]] | None:
    """(label, box) pairs of a Qwen-style JSON grounding answer; None when the text is not one."""
    block = _JSON_BLOCK_RE.search(text)
    candidate = block.group(1) if block else text.strip()
    if not candidate.startswith(("[", "{")):
        return None
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError:
        return None
    items = data if isinstance(data, list) else [data]
    drawn = []
    for item in items:
        if not isinstance(item, dict):
            continue
        box = item.get("bbox_2d", item.get("bbox"))
        if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            label = re.sub(r"[<>]", "", str(item.get("label", ""))).strip()  # a label can never become structure
            drawn.append((label, [float(v) for v in box]))
    return drawn


def _boxes_to_groups(
    drawn: list[tuple[str, list[float]]],
    proposals: np.ndarray,
    width: int,
    height: int,
    box_format: str,
    match_iou: float,
) -> str:
    """Each drawn box -> the best-overlapping proposal (rejected below ``match_iou``), grouped by label."""
    groups: dict[str, list[int]] = {}
    for label, values in drawn:
        box = np.array([to_pixels(values, width, height, box_format)])
        if len(proposals) == 0:
            continue
        overlaps = box_iou(box, proposals)[0]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= match_iou:
            indices = groups.setdefault(label or "object", [])
            if best not in indices:
                indices.append(best)
    return " ".join(
        f"<ground>{label}</ground><objects>{''.join(f'<obj{i}>' for i in indices)}</objects>"
        for label, indices in groups.items()
    )
