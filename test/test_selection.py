"""One set of selection limits for select_proposals and SelectionPolicy; the pipeline's warm-up."""

from __future__ import annotations

import numpy as np
import pytest

from chatrex_ros.core.proposals import MAX_COUNT_RANGE, MIN_SCORE_RANGE, NMS_IOU_RANGE, select_proposals
from chatrex_ros.core.types import MAX_PROPOSALS, RawProposals
from chatrex_ros.models.base import WARMUP_HW, ProposalPipeline, SelectionPolicy

BOXES = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], dtype=np.float32)
SCORES = np.array([0.9, 0.8], dtype=np.float32)

EDGES = [
    {"min_score": MIN_SCORE_RANGE[0]},
    {"min_score": MIN_SCORE_RANGE[1]},
    {"nms_iou": NMS_IOU_RANGE[0]},
    {"nms_iou": NMS_IOU_RANGE[1]},
    {"max_count": MAX_COUNT_RANGE[0]},
    {"max_count": MAX_COUNT_RANGE[1]},
]
OUTSIDE = [
    {"min_score": MIN_SCORE_RANGE[0] - 0.1},
    {"min_score": MIN_SCORE_RANGE[1] + 0.1},
    {"nms_iou": NMS_IOU_RANGE[0] - 0.1},
    {"nms_iou": NMS_IOU_RANGE[1] + 0.1},
    {"max_count": MAX_COUNT_RANGE[0] - 1},
    {"max_count": MAX_COUNT_RANGE[1] + 1},
]


def test_the_count_limit_is_the_models_index_tokens() -> None:
    assert MAX_COUNT_RANGE[1] == MAX_PROPOSALS == 100


@pytest.mark.parametrize("limits", EDGES, ids=str)
def test_policy_and_selection_accept_the_same_edges(limits: dict[str, float]) -> None:
    policy = SelectionPolicy(**limits)  # type: ignore[arg-type]
    select_proposals(BOXES, SCORES, policy.min_score, policy.nms_iou, policy.max_count)


@pytest.mark.parametrize("limits", OUTSIDE, ids=str)
def test_policy_and_selection_refuse_the_same_values(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(limits))):
        SelectionPolicy(**limits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=next(iter(limits))):
        select_proposals(BOXES, SCORES, **limits)  # type: ignore[arg-type]


class _Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        self.shapes.append(image_rgb.shape)
        return RawProposals(BOXES, SCORES)


class _OwnWarmup(_Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.warmed = 0

    def warmup(self) -> None:
        self.warmed += 1


def test_warmup_runs_one_blank_frame_through_a_backend_without_its_own() -> None:
    backend = _Recorder()
    ProposalPipeline(backend).warmup()
    assert backend.shapes == [(*WARMUP_HW, 3)]


def test_warmup_uses_the_backends_own_when_it_has_one() -> None:
    backend = _OwnWarmup()
    ProposalPipeline(backend).warmup()
    assert backend.warmed == 1 and backend.shapes == []  # e.g. an ONNX model with a fixed input size
