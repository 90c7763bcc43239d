"""What viewers draw over a frame: box outlines, colours per phrase, labels that stay readable (ROS-free).

Two consumers: the nodes' ``ImageMarker`` overlays, which Foxglove, Lichtblick and RViz draw on their image
panels (:func:`outline_segments`, :func:`phrase_colours`), and the annotated image the language node publishes
(:func:`draw_answer`). Every coordinate is a pixel of the original image, in the detectors' continuous
convention (the image spans [0, W] x [0, H]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chatrex_ros.core.types import Detection

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)
"""RGB colours, one per phrase in order of first appearance (repeating after eight)."""
PROPOSAL_COLOUR = (200, 200, 200)
"""All proposals of a frame: one light grey, thin, so the answer's colours stand out over them."""
REGION_COLOUR = (255, 255, 255)
"""The regions a region task asked about (white), beside the answer's colours."""


@dataclass(frozen=True)
class Region:
    """A box a region task asked about: the proposal index the query named and its box."""

    index: int
    box: tuple[float, ...]


def outline_segments(boxes: np.ndarray) -> np.ndarray:
    """(N*8, 2) float array: each box's four edges as point pairs, the layout of an ImageMarker LINE_LIST.

    Edges in order top, right, bottom, left; the corners are the boxes' own coordinates, unchanged.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    corners = [(x1, y1), (x2, y1), (x2, y1), (x2, y2), (x2, y2), (x1, y2), (x1, y2), (x1, y1)]
    return np.stack([np.stack(corner, axis=1) for corner in corners], axis=1).reshape(-1, 2)


def phrase_colours(labels: Sequence[str]) -> list[tuple[int, int, int]]:
    """The colour of each label: one per distinct phrase, in order of first appearance."""
    distinct = list(dict.fromkeys(labels))
    return [PALETTE[distinct.index(label) % len(PALETTE)] for label in labels]


def line_width(width: int, height: int) -> int:
    """Outline thickness in pixels: 1 up to VGA, 2 at 720p, 4 at 4K (a line a viewer still sees scaled down)."""
    return max(1, round(max(width, height) / 640))


def place_labels(
    anchors: Sequence[Sequence[float]],
    sizes: Sequence[tuple[int, int]],
    image_size: tuple[int, int],
) -> list[tuple[int, int]]:
    """Top-left corner of each label's rectangle: inside the image and clear of the labels placed before it.

    A label goes just above its box, else just inside its top, else below it, else inside its bottom; the first
    place that overlaps no earlier label wins, otherwise the label moves down until it is clear (or it keeps the
    first place when nothing is clear). Every rectangle is clamped into the image.
    """
    width, height = image_size
    placed: list[tuple[int, int, int, int]] = []
    corners: list[tuple[int, int]] = []
    for (x1, y1, _, y2), (w, h) in zip(anchors, sizes, strict=True):
        w, h = min(w, width), min(h, height)
        left = int(min(max(0.0, x1), width - w))
        candidates = [y1 - h, y1, y2, y2 - h]
        tops = [int(min(max(0.0, top), height - h)) for top in candidates]
        tops += list(range(0, height - h + 1, max(1, h)))  # then any free row, top to bottom
        top = next((t for t in tops if not any(_overlap((left, t, w, h), r) for r in placed)), tops[0])
        placed.append((left, top, w, h))
        corners.append((left, top))
    return corners


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def draw_answer(
    image_rgb: np.ndarray, detections: Sequence[Detection], regions: Sequence[Region] = ()
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A copy of the frame with the answer drawn, and the label rectangles (x, y, w, h) it drew.

    Each detection: its box in its phrase's colour, labelled ``<objK> phrase``; each queried region: its box in
    white, labelled ``region <objK>``. Lines and text scale with the image; labels sit on a dark backing,
    inside the frame and clear of each other (:func:`place_labels`).
    """
    import cv2

    canvas = np.ascontiguousarray(image_rgb).copy()
    height, width = canvas.shape[:2]
    thickness = line_width(width, height)
    font_scale = 0.45 * thickness
    items: list[tuple[Sequence[float], str, tuple[int, int, int]]] = [
        (d.box, f"<obj{d.proposal_index}> {d.label}".strip(), c) for d, c in _coloured(detections)
    ]
    items += [(r.box, f"region <obj{r.index}>", REGION_COLOUR) for r in regions]
    sizes = []
    for _, text, _ in items:
        (w, h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        sizes.append((w + 4, h + baseline + 4))
    corners = place_labels([tuple(box) for box, _, _ in items], sizes, (width, height))
    for box, _, colour in items:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
    rectangles = []
    for (_, text, colour), (left, top), (w, h) in zip(items, corners, sizes, strict=True):
        w, h = min(w, width), min(h, height)
        cv2.rectangle(canvas, (left, top), (left + w - 1, top + h - 1), (0, 0, 0), -1)
        baseline_y = top + h - 2 - cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)[1]
        cv2.putText(
            canvas, text, (left + 2, baseline_y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour, thickness, cv2.LINE_AA
        )
        rectangles.append((left, top, w, h))
    return canvas, rectangles


def _coloured(detections: Sequence[Detection]) -> list[tuple[Detection, tuple[int, int, int]]]:
    return list(zip(detections, phrase_colours([d.label for d in detections]), strict=True))
