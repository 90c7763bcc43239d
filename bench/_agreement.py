"""Do two proposal backends propose the same boxes? numpy only (the package's ``box_iou``), tested on CPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from chatrex_ros.core.proposals import box_iou


def _top_k(boxes: Any, scores: Any, k: int, what: str) -> np.ndarray:
    """The rows of the ``k`` highest scores, best first (ties keep their input order, so the result is stable)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{what}: expected (N, 4) boxes and N scores, got {boxes.shape} and {scores.shape}")
    order = np.argsort(-scores, kind="stable")[:k]
    return boxes[order]


def top_k_agreement(
    ref_boxes: Any, ref_scores: Any, boxes: Any, scores: Any, k: int = 100, iou: float = 0.9
) -> dict[str, Any]:
    """How many of the reference's top-``k`` boxes (by score) the other backend's top-``k`` also has.

    A reference box counts as matched when some box of the other top-``k`` overlaps it with IoU >= ``iou`` (not
    one-to-one: the order inside the top-``k`` does not matter, only which boxes made it in). ``top1_match`` says
    whether the two best-scoring boxes overlap with IoU >= ``iou``. With fewer than ``k`` boxes, all are used.
    Boxes are x1 y1 x2 y2 (any common unit), scores any comparable floats.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ref = _top_k(ref_boxes, ref_scores, k, "reference")
    other = _top_k(boxes, scores, k, "other")
    if ref.shape[0] == 0:
        raise ValueError("the reference has no boxes to match")
    # box_iou gives NaN for absurd coordinates: no overlap.
    overlaps = np.nan_to_num(box_iou(ref, other), nan=0.0) if other.shape[0] else np.zeros((ref.shape[0], 0))
    best = overlaps.max(axis=1) if other.shape[0] else np.zeros(ref.shape[0])
    matched = int(np.count_nonzero(best >= iou))
    top1_iou = float(overlaps[0, 0]) if other.shape[0] else 0.0
    return {
        "k": int(ref.shape[0]),
        "other_k": int(other.shape[0]),
        "iou_threshold": float(iou),
        "matched": matched,
        "fraction": matched / ref.shape[0],
        "top1_match": bool(top1_iou >= iou),
        "top1_iou": top1_iou,
    }
