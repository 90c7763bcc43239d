"""bench/gpu_check.py without a GPU (one line, status 2, no JSON) and its top-k agreement on constructed boxes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chatrex_ros.core.proposals import box_iou

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
WRAPPER = ROOT / "bench" / "gpu_check.sh"
NO_CUDA = "no CUDA GPU: run this on a CUDA machine"


def _load_agreement():
    spec = importlib.util.spec_from_file_location("bench_agreement", ROOT / "bench" / "_agreement.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.top_k_agreement


top_k_agreement = _load_agreement()


def _no_gpu_environment() -> dict[str, str]:
    # Hide any GPU, so that the no-CUDA path is what runs on every machine (a GPU machine would run the check);
    # PYTHON: the wrapper's interpreter is this one (with torch), not whichever `python` is first on PATH.
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}


def test_without_cuda_it_says_so_in_one_line_exits_2_and_writes_no_json(tmp_path: Path) -> None:
    out = tmp_path / "results" / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        cwd=ROOT,
        env=_no_gpu_environment(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [NO_CUDA]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # not even the results folder


def test_the_wrapper_runs_the_script_and_also_exits_2_without_cuda() -> None:
    result = ROOT / "bench" / "results" / "gpu_check.json"
    before = result.stat().st_mtime_ns if result.exists() else None
    # From another directory: the wrapper changes to the repository itself.
    done = subprocess.run(
        ["bash", str(WRAPPER)], cwd="/", env=_no_gpu_environment(), capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [NO_CUDA]
    assert (result.stat().st_mtime_ns if result.exists() else None) == before


def _grid(count: int, size: float = 10.0, spacing: float = 50.0) -> np.ndarray:
    """``count`` size x size boxes far apart (no box overlaps another, even shifted by a few pixels)."""
    corners = np.array([[i * spacing, (i % 3) * spacing] for i in range(count)], dtype=np.float64)
    return np.concatenate([corners, corners + size], axis=1)


def test_identical_proposals_agree_fully_with_the_top_1() -> None:
    boxes = _grid(120)
    scores = np.linspace(1.0, 0.01, 120)
    result = top_k_agreement(boxes, scores, boxes.copy(), scores.copy())
    assert result["k"] == 100 and result["other_k"] == 100
    assert result["matched"] == 100
    assert result["fraction"] == 1.0
    assert result["top1_match"] is True
    assert result["top1_iou"] == pytest.approx(1.0)


def test_boxes_shifted_below_the_iou_threshold_match_nothing() -> None:
    boxes = _grid(20)
    shifted = boxes + np.array([1.0, 0.0, 1.0, 0.0])  # 10 px boxes moved 1 px: IoU 90 / 110 = 0.82
    assert np.all(np.diag(box_iou(boxes, shifted)) < 0.9)
    scores = np.linspace(1.0, 0.1, 20)
    result = top_k_agreement(boxes, scores, shifted, scores)
    assert result["matched"] == 0
    assert result["fraction"] == 0.0
    assert result["top1_match"] is False
    assert result["top1_iou"] == pytest.approx(90 / 110)


def test_a_shift_above_the_threshold_still_matches() -> None:
    boxes = _grid(5, size=100.0, spacing=500.0)
    shifted = boxes + np.array([2.0, 0.0, 2.0, 0.0])  # IoU 9800 / 10200 = 0.96
    result = top_k_agreement(boxes, np.arange(5.0), shifted, np.arange(5.0))
    assert result["fraction"] == 1.0 and result["top1_match"] is True
    assert result["top1_iou"] == pytest.approx(9800 / 10200)


def test_half_the_boxes_moved_gives_half() -> None:
    boxes = _grid(10)
    moved = boxes.copy()
    moved[::2] += np.array([3.0, 3.0, 3.0, 3.0])
    scores = np.linspace(1.0, 0.1, 10)
    result = top_k_agreement(boxes, scores, moved, scores)
    assert result["matched"] == 5 and result["fraction"] == 0.5
    assert result["top1_match"] is False  # the best box (index 0) is one of the moved ones


def test_the_order_of_the_other_backends_rows_does_not_matter() -> None:
    boxes = _grid(100)
    scores = np.linspace(1.0, 0.01, 100)
    order = np.random.default_rng(3).permutation(100)
    result = top_k_agreement(boxes, scores, boxes[order], scores[order])
    assert result["fraction"] == 1.0
    assert result["top1_match"] is True


def test_k_larger_than_the_number_of_boxes_uses_all_of_them() -> None:
    boxes = _grid(5)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    result = top_k_agreement(boxes, scores, boxes, scores, k=100)
    assert result["k"] == 5 and result["other_k"] == 5
    assert result["matched"] == 5 and result["fraction"] == 1.0
    fewer = top_k_agreement(boxes, scores, boxes[:3], scores[:3], k=100)
    assert fewer["other_k"] == 3 and fewer["matched"] == 3 and fewer["fraction"] == pytest.approx(3 / 5)


def test_the_scores_decide_which_boxes_are_the_top_k() -> None:
    boxes = _grid(10)
    scores = np.linspace(1.0, 0.1, 10)  # the reference's top 3: boxes 0, 1, 2
    reversed_scores = scores[::-1].copy()  # the other's top 3: boxes 9, 8, 7
    result = top_k_agreement(boxes, scores, boxes, reversed_scores, k=3)
    assert result["matched"] == 0 and result["top1_match"] is False
    shuffled_tail = scores.copy()
    shuffled_tail[3:] = shuffled_tail[3:][::-1]  # the same top 3, the rest reordered
    result = top_k_agreement(boxes, scores, boxes, shuffled_tail, k=3)
    assert result["matched"] == 3 and result["top1_match"] is True
    # Only the reference's own top-k counts: its low-scored boxes are not asked for.
    lifted = scores.copy()
    lifted[9] = 2.0  # box 9 becomes the reference's best, and the other's top 3 (0, 1, 2) lacks it
    result = top_k_agreement(boxes, lifted, boxes, scores, k=3)
    assert result["matched"] == 2 and result["top1_match"] is False


def test_the_other_backend_with_no_boxes_matches_nothing() -> None:
    result = top_k_agreement(_grid(4), np.ones(4), np.zeros((0, 4)), np.zeros(0))
    assert result["matched"] == 0 and result["other_k"] == 0 and result["top1_match"] is False


@pytest.mark.parametrize(
    ("ref_boxes", "ref_scores", "k"),
    [
        (np.zeros((0, 4)), np.zeros(0), 100),  # nothing to match
        (np.zeros((3, 4)), np.zeros(2), 100),  # scores do not fit the boxes
        (np.zeros((3, 3)), np.zeros(3), 100),  # not x1 y1 x2 y2
        (np.zeros((3, 4)), np.zeros(3), 0),  # k < 1
    ],
)
def test_bad_input_is_refused(ref_boxes: np.ndarray, ref_scores: np.ndarray, k: int) -> None:
    with pytest.raises(ValueError):
        top_k_agreement(ref_boxes, ref_scores, _grid(3), np.ones(3), k=k)
