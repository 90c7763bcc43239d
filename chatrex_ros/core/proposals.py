"""Box geometry and the selection of the proposal list the language model is given.

``select_proposals`` decides which boxes become ``<obj0>``..``<obj99>``. Every proposal backend
(selective search, UPN on torch / ONNX Runtime / TensorRT) goes through it, so all of them hand the
model lists made by the same rule: threshold, score order, greedy NMS, at most 100 boxes.
numpy only; no torchvision (its NMS would pull torch into the ROS-free core).
"""

from __future__ import annotations

import math

import numpy as np

from chatrex_ros.core.types import MAX_PROPOSALS

# --- the selection limits: select_proposals, SelectionPolicy and the proposal_node parameters use these -----
DEFAULT_MIN_SCORE = 0.3
"""UPN's reference threshold."""
MIN_SCORE_RANGE = (0.0, 1.0)
"""Scores are in [0, 1]; a threshold outside would keep everything or nothing."""
DEFAULT_NMS_IOU = 0.8
"""UPN's reference NMS threshold."""
NMS_IOU_RANGE = (-1.0, 1.0)
"""An IoU is at most 1; any value <= 0 disables NMS."""
MAX_COUNT_RANGE = (0, MAX_PROPOSALS)
"""At most :data:`~chatrex_ros.core.types.MAX_PROPOSALS` boxes: the model's index tokens."""

BOX_REACH = 1.0
"""How far past the image a received box may reach, in image sizes. UPN's centre/size boxes can stick out
by half an image; a box farther out (1e30, a wrong unit, another camera's frame) is a publisher's fault."""

_NMS_BLOCK = 64
"""Candidates examined per NMS step. Greedy NMS stops once ``max_count`` boxes are kept, so blocks
avoid computing IoUs for low-score candidates that are never reached, while each block is still one
vectorised IoU matrix. 64 measured fastest for 900 boxes (bench/bench_core.py): larger blocks make
temporaries over glibc's 128 KiB mmap threshold, and every allocation then page-faults."""

_MAX_CELLS = 8192
"""Largest (kept x window) IoU matrix built while filtering candidates against kept boxes (64 KiB)."""

_STRICT_UPPER = np.triu(np.ones((_NMS_BLOCK, _NMS_BLOCK), dtype=bool), k=1)
"""``[j, i]`` is True for j < i: only a higher-ranked box may suppress a lower-ranked one."""


def _as_boxes(boxes: object, name: str = "boxes") -> np.ndarray:
    """(N, 4) float array; an empty input of any shape is N = 0."""
    array = np.asarray(boxes)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as x1 y1 x2 y2, got {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) float64 intersection-over-union of x1 y1 x2 y2 boxes, fully vectorised.

    Boxes of zero area have IoU 0 with everything (including themselves) instead of NaN, so a
    degenerate proposal can neither suppress nor be matched.
    """
    columns_a = _columns(_as_boxes(a, "a"))
    columns_b = _columns(_as_boxes(b, "b"))
    with np.errstate(over="ignore", invalid="ignore"):  # absurd coordinates give IoU 0 or NaN, quietly
        return _iou_matrix(columns_a, _column_areas(columns_a), columns_b, _column_areas(columns_b))


def _columns(boxes: np.ndarray) -> np.ndarray:
    """(4, N) contiguous float64 x1, y1, x2, y2 rows of (N, 4) boxes.

    Outer products run faster on contiguous rows than on the strided columns of an (N, 4) array.
    """
    return np.ascontiguousarray(boxes.T, dtype=np.float64)


def _column_areas(columns: np.ndarray) -> np.ndarray:
    areas: np.ndarray = np.maximum(columns[2] - columns[0], 0.0) * np.maximum(columns[3] - columns[1], 0.0)
    return areas


def _iou_matrix(a: np.ndarray, area_a: np.ndarray, b: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """IoU of (4, N) and (4, M) column boxes with known areas (NMS reuses them across blocks).

    In-place arithmetic: this is the hot loop of proposal selection.
    """
    iou = np.minimum.outer(a[2], b[2])
    iou -= np.maximum.outer(a[0], b[0])
    np.maximum(iou, 0.0, out=iou)
    heights = np.minimum.outer(a[3], b[3])
    heights -= np.maximum.outer(a[1], b[1])
    np.maximum(heights, 0.0, out=heights)
    intersection = iou
    intersection *= heights
    union = np.add.outer(area_a, area_b)
    union -= intersection
    # Two empty boxes (union 0), or coordinates so large the areas overflow (union NaN): IoU 0.
    result: np.ndarray = np.divide(intersection, union, out=np.zeros_like(union), where=union > 0.0)
    return result


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Centre/size boxes (UPN's ``pred_boxes`` layout) to corners, shape ``(..., 4)`` kept.

    Floating dtypes are kept (float32 stays float32); integer input becomes float64 because the
    half-sizes are fractional.
    """
    array = np.asarray(boxes)
    if array.ndim == 0 or array.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (..., 4) as cx cy w h, got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    centre = array[..., :2]
    half = array[..., 2:] / 2
    return np.concatenate([centre - half, centre + half], axis=-1)


def select_proposals(
    boxes: np.ndarray,
    scores: np.ndarray,
    min_score: float = DEFAULT_MIN_SCORE,
    nms_iou: float = DEFAULT_NMS_IOU,
    max_count: int = MAX_PROPOSALS,
) -> np.ndarray:
    """Indices (int64) into ``boxes``/``scores`` of the proposals to give the model, best first.

    Steps, as in the UPN reference post-processing: drop rows with a non-finite box or score; keep
    ``score >= min_score``; order by descending score (ties keep input order); greedy NMS that drops a
    box whose IoU with an already kept, higher-ranked box is ``> nms_iou`` (``nms_iou <= 0`` disables
    NMS); stop at ``max_count`` (at most 100, the model's index tokens; the reference demo forgets this
    cap). The order of the result IS the ``<objK>`` numbering.
    """
    boxes_array = _as_boxes(boxes)
    scores_array = np.asarray(scores)
    if scores_array.size == 0 and boxes_array.shape[0] == 0:
        scores_array = np.zeros(0, dtype=np.float64)
    if scores_array.ndim != 1 or scores_array.shape[0] != boxes_array.shape[0]:
        raise ValueError(
            f"scores must have shape ({boxes_array.shape[0]},) to match boxes {boxes_array.shape}, "
            f"got {scores_array.shape}"
        )
    if not (np.issubdtype(scores_array.dtype, np.floating) or np.issubdtype(scores_array.dtype, np.integer)):
        raise ValueError(f"scores must be numeric, got dtype {scores_array.dtype}")
    min_score, nms_iou, max_count = check_selection(min_score, nms_iou, max_count)
    if max_count == 0:
        return np.zeros(0, dtype=np.int64)

    # pre-process: finite, above threshold, sorted
    boxes64 = boxes_array.astype(np.float64, copy=False)
    scores64 = scores_array.astype(np.float64, copy=False)
    usable = np.isfinite(scores64) & np.isfinite(boxes64).all(axis=1) & (scores64 >= min_score)
    candidates = np.flatnonzero(usable)
    order = candidates[np.argsort(-scores64[candidates], kind="stable")]
    if nms_iou <= 0.0 or order.size <= 1:
        return order[:max_count].astype(np.int64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):  # finite but absurd boxes must not spam warnings
        return _greedy_nms(boxes64[order], nms_iou, max_count, order)


def check_selection(min_score: object, nms_iou: object, max_count: object) -> tuple[float, float, int]:
    """The selection parameters as (float, float, int); ValueError naming the one out of its range.

    The ranges are :data:`MIN_SCORE_RANGE`, :data:`NMS_IOU_RANGE` and :data:`MAX_COUNT_RANGE`.
    """
    score = _finite_float(min_score, "min_score")
    if not MIN_SCORE_RANGE[0] <= score <= MIN_SCORE_RANGE[1]:
        raise ValueError(f"min_score must be in [{MIN_SCORE_RANGE[0]:g}, {MIN_SCORE_RANGE[1]:g}], got {score}")
    iou = _finite_float(nms_iou, "nms_iou")
    if iou > NMS_IOU_RANGE[1]:
        raise ValueError(f"nms_iou must be <= {NMS_IOU_RANGE[1]:g} (<= 0 disables NMS), got {iou}")
    if iou < NMS_IOU_RANGE[0]:
        raise ValueError(f"nms_iou must be >= {NMS_IOU_RANGE[0]:g} (any value <= 0 disables NMS), got {iou}")
    if isinstance(max_count, (bool, np.bool_)) or not isinstance(max_count, (int, np.integer)):
        raise ValueError(f"max_count must be an int, got {max_count!r}")
    low, high = MAX_COUNT_RANGE
    if not low <= max_count <= high:
        raise ValueError(
            f"max_count must be in {low}..{high} (ChatRex has {MAX_PROPOSALS} index tokens), got {max_count}"
        )
    return score, iou, int(max_count)


def _finite_float(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _greedy_nms(sorted_boxes: np.ndarray, threshold: float, max_count: int, order: np.ndarray) -> np.ndarray:
    """Greedy NMS over score-sorted boxes, a window of candidates at a time.

    Each round: candidates of a window overlapping an already kept box are removed with one
    (kept x window) IoU matrix; among the first ``_NMS_BLOCK`` survivors, greedy NMS is the unique
    fixed point of ``keep[i] = no kept j < i overlaps i``, reached by iterating that rule from
    ``keep = all`` (pass t fixes position t for good; in practice two or three passes fix all).
    No Python loop runs over box pairs, and candidates ranked below the ``max_count``-th kept box
    are never looked at.
    """
    columns = _columns(sorted_boxes)
    areas = _column_areas(columns)
    kept_positions: list[np.ndarray] = []
    kept_count = 0
    kept_columns = columns[:, :0]
    kept_areas = areas[:0]
    total = columns.shape[1]
    start = 0
    while start < total and kept_count < max_count:
        # Few kept boxes -> a wide window is cheap to filter (kept x window cells stay bounded).
        stop = min(start + max(_NMS_BLOCK, _MAX_CELLS // max(kept_count, 1)), total)
        positions = np.arange(start, stop)
        if kept_count:
            window_iou = _iou_matrix(kept_columns, kept_areas, columns[:, start:stop], areas[start:stop])
            positions = positions[~(window_iou > threshold).any(axis=0)]
        if positions.size > _NMS_BLOCK:
            # Survivors past one block wait for the next round; what a kept box killed stays killed.
            stop = int(positions[_NMS_BLOCK])
            positions = positions[:_NMS_BLOCK]
        if positions.size:
            # Greedy NMS among the survivors, as a fixed-point iteration.
            block = columns[:, positions]
            block_areas = areas[positions]
            overlaps = _iou_matrix(block, block_areas, block, block_areas) > threshold
            overlaps &= _STRICT_UPPER[: positions.size, : positions.size]
            keep: np.ndarray = np.ones(positions.size, dtype=bool)
            while True:
                new_keep: np.ndarray = ~overlaps[keep].any(axis=0)
                if np.array_equal(new_keep, keep):
                    break
                keep = new_keep
            positions = positions[keep][: max_count - kept_count]
            kept_positions.append(positions)
            kept_count += positions.size
            kept_columns = np.concatenate([kept_columns, columns[:, positions]], axis=1)
            kept_areas = np.concatenate([kept_areas, areas[positions]])
        start = stop
    if not kept_positions:
        return np.zeros(0, dtype=np.int64)
    kept: np.ndarray = order[np.concatenate(kept_positions)].astype(np.int64, copy=False)
    return kept


def check_proposal_list(boxes: np.ndarray, scores: np.ndarray, width: int, height: int) -> None:
    """ValueError saying what is wrong with a proposal list another process sent for a ``width`` x ``height`` image.

    A list is index-stable (row K is ``<objK>``), so one bad box refuses the whole list rather than being
    dropped. What every backend's list satisfies, through :func:`select_proposals`: at most
    :data:`~chatrex_ros.core.types.MAX_PROPOSALS` finite boxes with ``x1 <= x2`` and ``y1 <= y2``, within
    :data:`BOX_REACH` image sizes of the image, scores finite and in descending order.
    """
    if width < 1 or height < 1:
        raise ValueError(f"the image size must be positive, got {width}x{height}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"{boxes.shape[0]} proposal boxes but {scores.size} scores")
    if scores.size > MAX_PROPOSALS:
        raise ValueError(f"{scores.size} proposals exceed the model's {MAX_PROPOSALS} index tokens")
    if not np.isfinite(scores).all():
        raise ValueError(f"score {_first(~np.isfinite(scores))} is not finite")
    if not np.isfinite(boxes).all():
        raise ValueError(f"box {_first(~np.isfinite(boxes).all(axis=1))} has a non-finite coordinate")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        index = _first(inverted)
        raise ValueError(f"box {index} is inverted (x1 > x2 or y1 > y2): {_box_text(boxes[index])}")
    size = np.array([width, height, width, height], dtype=np.float64)
    far = ((boxes < -BOX_REACH * size) | (boxes > (1.0 + BOX_REACH) * size)).any(axis=1)
    if far.any():
        index = _first(far)
        raise ValueError(
            f"box {index} {_box_text(boxes[index])} lies far outside the {width}x{height} image "
            f"(more than {BOX_REACH:g} image size past an edge)"
        )
    rising = np.diff(scores) > 0
    if rising.any():
        index = _first(rising) + 1
        raise ValueError(
            f"scores are not in descending order (score {index} = {scores[index]:.3g} > "
            f"score {index - 1} = {scores[index - 1]:.3g}); the list must be best first"
        )


def _first(mask: object) -> int:
    """Index of the first True of a boolean array."""
    return int(np.flatnonzero(np.asarray(mask))[0])


def _box_text(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{value:.4g}" for value in box) + "]"
