"""Box geometry and proposal selection, checked against a plain-Python greedy NMS."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from chatrex_ros.core.proposals import BOX_REACH, box_iou, check_proposal_list, cxcywh_to_xyxy, select_proposals


# --- reference: the textbook algorithm, one pair at a time ------------------------------------------
def reference_iou(a, b) -> float:
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    width = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    height = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    intersection = width * height
    union = area_a + area_b - intersection
    return intersection / union if union > 0 else 0.0


def reference_select(boxes, scores, min_score, nms_iou, max_count) -> list[int]:
    rows = [[float(v) for v in row] for row in np.asarray(boxes, dtype=np.float64)]
    values = [float(v) for v in np.asarray(scores, dtype=np.float64)]
    candidates = [
        i for i in range(len(values)) if np.isfinite(values[i]) and all(np.isfinite(rows[i])) and values[i] >= min_score
    ]
    candidates.sort(key=lambda i: -values[i])  # sort is stable: ties keep input order
    kept: list[int] = []
    for i in candidates:
        if len(kept) == max_count:
            break
        if nms_iou > 0 and any(reference_iou(rows[j], rows[i]) > nms_iou for j in kept):
            continue
        kept.append(i)
    return kept


def random_boxes(rng: np.random.Generator, n: int, spread: float, size=(5.0, 120.0)) -> np.ndarray:
    centres = rng.uniform(0, spread, (n, 2))
    sizes = rng.uniform(*size, (n, 2))
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)


# --- box_iou ---------------------------------------------------------------------------------------
def test_iou_known_values():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], dtype=np.float32)
    b = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6]], dtype=np.float32)
    iou = box_iou(a, b)
    assert iou.shape == (2, 3) and iou.dtype == np.float64
    np.testing.assert_allclose(iou, [[1.0, 2 / 6, 0.0], [0.25, 0.0, 0.0]])


def test_iou_of_degenerate_boxes_is_zero_not_nan():
    boxes = np.array([[1, 1, 1, 5], [3, 3, 2, 2], [0, 0, 4, 4]], dtype=np.float64)
    iou = box_iou(boxes, boxes)
    assert np.isfinite(iou).all()
    np.testing.assert_array_equal(iou[:2], 0.0)
    assert iou[2, 2] == 1.0


def test_iou_empty_and_bad_shapes():
    assert box_iou(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        box_iou(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="numeric"):
        box_iou(np.array([["a", "b", "c", "d"]]), np.zeros((1, 4)))


def test_iou_matches_pairwise_reference():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 37, 200), random_boxes(rng, 23, 200)
    expected = [[reference_iou(x, y) for y in b] for x in a]
    np.testing.assert_array_equal(box_iou(a, b), expected)  # same float64 arithmetic, bit for bit
    np.testing.assert_array_equal(box_iou(a, b), box_iou(b, a).T)


# --- cxcywh_to_xyxy --------------------------------------------------------------------------------
def test_cxcywh_to_xyxy():
    boxes = np.array([[0.5, 0.5, 1.0, 0.5], [10, 20, 4, 6]], dtype=np.float32)
    converted = cxcywh_to_xyxy(boxes)
    assert converted.dtype == np.float32
    np.testing.assert_allclose(converted, [[0, 0.25, 1, 0.75], [8, 17, 12, 23]])


def test_cxcywh_to_xyxy_keeps_batch_shape_and_promotes_ints():
    batch = np.array([[[3, 3, 3, 1]]], dtype=np.int64)
    converted = cxcywh_to_xyxy(batch)
    assert converted.shape == (1, 1, 4) and converted.dtype == np.float64
    np.testing.assert_allclose(converted, [[[1.5, 2.5, 4.5, 3.5]]])
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        cxcywh_to_xyxy(np.zeros((3, 2)))


# --- select_proposals: rules -----------------------------------------------------------------------
def test_threshold_is_inclusive_and_order_is_by_score():
    boxes = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [30, 30, 31, 31]], dtype=np.float32)
    scores = np.array([0.3, 0.9, 0.29, 0.5], dtype=np.float32)
    keep = select_proposals(boxes, scores, min_score=np.float32(0.3))
    assert keep.tolist() == [1, 3, 0]
    assert keep.dtype == np.int64


def test_ties_keep_input_order():
    boxes = np.array([[i * 10, 0, i * 10 + 5, 5] for i in range(5)], dtype=np.float64)
    scores = np.array([0.5, 0.7, 0.5, 0.7, 0.5])
    assert select_proposals(boxes, scores).tolist() == [1, 3, 0, 2, 4]


def test_nms_suppresses_only_above_the_threshold():
    # IoU of these two is exactly 0.5.
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], dtype=np.float32)
    scores = np.array([0.8, 0.9])
    assert select_proposals(boxes, scores, nms_iou=0.5).tolist() == [1, 0]
    assert select_proposals(boxes, scores, nms_iou=0.49).tolist() == [1]


def test_nms_is_greedy_not_pairwise():
    # A chain: 0 overlaps 1, 1 overlaps 2, 0 does not overlap 2. Greedy keeps 0 and 2 (1 is gone
    # before it can suppress 2); dropping every box that overlaps any other would keep only 0.
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7])
    assert box_iou(boxes[:1], boxes[2:])[0, 0] < 0.75 < box_iou(boxes[:1], boxes[1:2])[0, 0]
    assert select_proposals(boxes, scores, nms_iou=0.75).tolist() == [0, 2]


def test_non_positive_nms_iou_disables_nms():
    boxes = np.tile(np.array([[0, 0, 5, 5]], dtype=np.float32), (4, 1))
    scores = np.array([0.4, 0.6, 0.5, 0.7])
    assert select_proposals(boxes, scores, nms_iou=0.0).tolist() == [3, 1, 2, 0]
    assert select_proposals(boxes, scores, nms_iou=-1).tolist() == [3, 1, 2, 0]
    assert select_proposals(boxes, scores, nms_iou=0.8).tolist() == [3]


def test_cap_is_enforced():
    rng = np.random.default_rng(2)
    boxes = np.array([[i * 10, 0, i * 10 + 5, 5] for i in range(300)], dtype=np.float32)
    scores = rng.uniform(0.5, 1.0, 300)
    keep = select_proposals(boxes, scores)
    assert len(keep) == 100
    np.testing.assert_array_equal(keep, np.argsort(-scores, kind="stable")[:100])
    assert len(select_proposals(boxes, scores, max_count=7)) == 7
    assert len(select_proposals(boxes, scores, max_count=0)) == 0


def test_non_finite_rows_are_dropped():
    boxes = np.array(
        [[0, 0, 1, 1], [np.nan, 0, 1, 1], [10, 10, 11, np.inf], [20, 20, 21, 21], [30, 30, 31, 31]],
        dtype=np.float32,
    )
    scores = np.array([0.5, 0.99, 0.98, np.nan, np.inf], dtype=np.float32)
    assert select_proposals(boxes, scores).tolist() == [0]


@pytest.mark.filterwarnings("error")
def test_absurd_but_finite_boxes_neither_warn_nor_suppress_wrongly():
    boxes = np.array([[0, 0, 1e200, 1e200], [1, 1, 1e200, 1e200], [0, 0, 1, 1], [0, 0, 1, 1]])
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    keep = select_proposals(boxes, scores)
    assert keep.tolist() == reference_select(boxes, scores, 0.3, 0.8, 100)
    assert keep.tolist() == [0, 1, 2]  # overflowing areas give no IoU; the duplicate unit box goes


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
def test_any_numeric_dtype(dtype):
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]]).astype(dtype)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    assert select_proposals(boxes, scores).tolist() == [0, 2]


@pytest.mark.parametrize(
    ("boxes", "scores"),
    [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)), (np.array([]), np.array([])), ([], [])],
)
def test_no_boxes(boxes, scores):
    keep = select_proposals(boxes, scores)
    assert keep.shape == (0,) and keep.dtype == np.int64


def test_nothing_above_threshold():
    assert select_proposals(np.ones((3, 4)), np.full(3, 0.1)).size == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_count": 101}, "max_count must be in 0..100"),
        ({"max_count": -1}, "max_count must be in 0..100"),
        ({"max_count": 2.5}, "max_count must be an int"),
        ({"nms_iou": 1.5}, "nms_iou must be <= 1"),
        ({"nms_iou": float("nan")}, "nms_iou must be finite"),
        ({"min_score": "high"}, "min_score must be a number"),
        ({"boxes": np.zeros((3, 5))}, r"shape \(N, 4\)"),
        ({"scores": np.zeros(2)}, r"scores must have shape \(3,\)"),
        ({"scores": np.zeros((3, 1))}, r"scores must have shape \(3,\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    arguments = {"boxes": np.ones((3, 4)), "scores": np.ones(3)} | kwargs
    with pytest.raises(ValueError, match=message):
        select_proposals(**arguments)


# --- select_proposals vs the reference -------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "spread", "nms_iou", "min_score"),
    [
        (900, 1000, 0.8, 0.3),  # UPN-like: many candidates, little suppression
        (900, 100, 0.5, 0.3),  # crowded: most candidates suppressed, many NMS rounds
        (900, 10, 0.5, 0.0),  # nearly concentric: few survivors
        (900, 300, 0.3, 0.0),  # > 64 survivors per round after filtering
        (150, 50, 0.7, 0.1),
    ],
)
def test_matches_reference_on_large_random_sets(n, spread, nms_iou, min_score):
    rng = np.random.default_rng(n + spread)
    for _ in range(3):
        boxes = random_boxes(rng, n, spread, size=(10, 300)).astype(np.float32)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        scores[rng.integers(0, n, n // 10)] = 0.5  # ties
        expected = reference_select(boxes, scores, min_score, nms_iou, 100)
        assert select_proposals(boxes, scores, min_score, nms_iou).tolist() == expected


def test_matches_reference_on_long_suppression_chains():
    # Boxes sliding by 1 px: each overlaps its neighbours above the threshold, so the greedy
    # outcome depends on every earlier decision (the worst case for the fixed-point iteration).
    x = np.arange(400, dtype=np.float64)
    boxes = np.stack([x, np.zeros_like(x), x + 10, np.full_like(x, 10)], axis=1)
    scores = np.linspace(1.0, 0.5, 400)
    expected = reference_select(boxes, scores, 0.3, 0.75, 100)
    assert select_proposals(boxes, scores, nms_iou=0.75).tolist() == expected
    assert len(expected) > 64


coordinates = st.integers(0, 12).map(float)  # a coarse grid: exact overlaps, duplicates, ties
grid_box = st.tuples(coordinates, coordinates, st.integers(0, 6), st.integers(0, 6)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
)
special = st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def box_sets(draw):
    n = draw(st.integers(0, 160))
    boxes = np.array(draw(st.lists(grid_box, min_size=n, max_size=n)), dtype=np.float64).reshape(n, 4)
    scores = np.array(
        draw(st.lists(st.sampled_from([0.1, 0.3, 0.35, 0.5, 0.5, 0.8, 0.9, 1.0]), min_size=n, max_size=n)),
        dtype=np.float64,
    )
    if n and draw(st.booleans()):
        boxes[draw(st.integers(0, n - 1)), draw(st.integers(0, 3))] = draw(special)
        scores[draw(st.integers(0, n - 1))] = draw(special)
    return boxes, scores


@settings(max_examples=250, deadline=None)
@given(
    data=box_sets(),
    min_score=st.sampled_from([0.0, 0.3, 0.5]),
    nms_iou=st.sampled_from([-1.0, 0.0, 0.25, 0.5, 0.8, 1.0]),
    max_count=st.integers(0, 100),
)
def test_matches_reference_on_grid_boxes(data, min_score, nms_iou, max_count):
    boxes, scores = data
    keep = select_proposals(boxes, scores, min_score, nms_iou, max_count)
    assert keep.tolist() == reference_select(boxes, scores, min_score, nms_iou, max_count)


@settings(max_examples=150, deadline=None)
@given(
    boxes=hnp.arrays(np.float32, st.tuples(st.integers(0, 200), st.just(4)), elements=st.floats(-1e4, 1e4, width=32)),
    nms_iou=st.floats(0.05, 1.0),
    max_count=st.integers(1, 100),
    seed=st.integers(0, 2**32 - 1),
)
def test_output_properties(boxes, nms_iou, max_count, seed):
    scores = np.random.default_rng(seed).uniform(0, 1, boxes.shape[0]).astype(np.float32)
    keep = select_proposals(boxes, scores, 0.3, nms_iou, max_count)
    assert len(keep) <= max_count
    assert len(np.unique(keep)) == len(keep)
    assert np.all(np.diff(scores[keep]) <= 0)  # sorted by descending score
    assert np.all(scores[keep] >= np.float32(0.3))
    iou = box_iou(boxes[keep], boxes[keep])
    np.fill_diagonal(iou, 0.0)
    assert np.all(iou <= nms_iou)  # no two kept boxes overlap above the threshold
    # Every eligible box ranked before the last kept one was either kept or overlaps a kept,
    # higher-ranked box: greedy NMS skipped it for a reason.
    if len(keep):
        order = np.argsort(-scores, kind="stable")
        eligible = order[scores[order] >= np.float32(0.3)]
        last_rank = int(np.flatnonzero(eligible == keep[-1])[0])
        kept_set = set(keep.tolist())
        for rank, index in enumerate(eligible[:last_rank]):
            if index in kept_set:
                continue
            higher_kept = [k for k in eligible[:rank] if k in kept_set]
            assert higher_kept and box_iou(boxes[[index]], boxes[higher_kept]).max() > nms_iou


# --- check_proposal_list: lists received from another process --------------------------------------
W, H = 640, 480


def _check(boxes, scores, width=W, height=H) -> None:
    check_proposal_list(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), width, height)


@pytest.mark.parametrize(
    ("boxes", "scores", "message"),
    [
        ([[50, 10, 10, 60]], [0.9], "box 0 is inverted"),
        ([[0, 0, 1, 1], [10, 60, 50, 10]], [0.9, 0.8], "box 1 is inverted"),
        ([[0, 0, 1e30, 1e30]], [0.9], "far outside"),
        ([[0, 0, (1 + BOX_REACH) * W + 1, 10]], [0.9], "far outside"),
        ([[-BOX_REACH * W - 1, 0, 10, 10]], [0.9], "far outside"),
        ([[0, 0, 1, 1]] * 3, [0.5, 0.6, 0.1], "score 1 = 0.6 > score 0 = 0.5"),
        ([[0, 0, 1, 1]], [np.nan], "score 0 is not finite"),
        ([[0, np.inf, 1, 1]], [0.5], "box 0 has a non-finite"),
        ([[0, 0, 1, 1]] * 2, [0.5], "2 proposal boxes but 1 scores"),
        ([[0, 0, 1, 1]] * 101, [0.5] * 101, "101 proposals exceed"),
    ],
)
def test_a_received_list_that_no_backend_makes_is_refused_with_the_reason(boxes, scores, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _check(boxes, scores)


def test_an_image_size_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="image size must be positive"):
        _check([[0, 0, 1, 1]], [0.5], width=0)


def test_every_list_select_proposals_makes_from_upn_like_boxes_is_accepted() -> None:
    """UPN's centre/size boxes reach up to half an image past the edges; ties in score are fine."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 1, (500, 2))
    sizes = rng.uniform(0, 1, (500, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1) * [W, H, W, H]
    scores = np.round(rng.uniform(0, 1, 500), 1)  # many ties
    kept = select_proposals(boxes, scores, min_score=0.0, nms_iou=0.5)
    _check(boxes[kept], scores[kept])
    _check(np.zeros((0, 4)), np.zeros(0))  # an empty list is a valid answer of a proposer
