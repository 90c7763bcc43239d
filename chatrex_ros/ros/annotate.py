"""Draw an answer's resolved detections on the frame it was computed from (for RViz / Foxglove)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chatrex_ros.core.types import Detection

_PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
    ],
    dtype=np.uint8,
)


def draw_detections(image_rgb: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """A copy of the image with each detection's box, ``<objK>`` index and phrase drawn; one colour per phrase."""
    import cv2

    canvas = np.ascontiguousarray(image_rgb).copy()
    labels = list(dict.fromkeys(d.label for d in detections))
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for detection in detections:
        color = tuple(int(c) for c in _PALETTE[labels.index(detection.label) % len(_PALETTE)])
        x1, y1, x2, y2 = (int(round(v)) for v in detection.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        text = f"<obj{detection.proposal_index}> {detection.label}".strip()
        cv2.putText(
            canvas,
            text,
            (x1 + 2, max(12, y1 - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thickness,
            color,
            thickness,
            cv2.LINE_AA,
        )
    return canvas
