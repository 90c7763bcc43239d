"""The two model interfaces every backend implements, and the proposal pipeline around them.

A backend is a small object with one job; nodes, the evaluation and the CLI only ever see these
interfaces, so a new backend slots in without touching them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from chatrex_ros.core.proposals import DEFAULT_MIN_SCORE, DEFAULT_NMS_IOU, check_selection, select_proposals
from chatrex_ros.core.types import MAX_PROPOSALS, Proposals, RawProposals

WARMUP_HW = (480, 640)
"""The blank frame a backend without its own ``warmup()`` is warmed up with: what a 640x480 camera gives."""


@runtime_checkable
class ProposalBackend(Protocol):
    """Class-agnostic box proposer (selective search, UPN on torch / ONNX Runtime / TensorRT).

    Optionally also ``warmup() -> None``: one inference before serving (first runs allocate memory and, on a
    GPU, pick kernels). A backend whose input size is fixed by its model file (ONNX Runtime, TensorRT) defines
    it, because a blank camera frame of another size is refused; every other backend is warmed up with one
    blank frame. Call it through :meth:`ProposalPipeline.warmup`, which picks between the two.
    """

    name: str

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        """Boxes for an (H, W, 3) uint8 RGB image, in that image's pixel coordinates."""
        ...


@runtime_checkable
class LanguageBackend(Protocol):
    """The multimodal LLM: image + ordered boxes + prompt -> raw answer text naming box indices.

    Optionally also ``stop() -> None``: end the running generation early (called from another thread when the
    ``ask`` action goal it serves is cancelled; ``generate`` may then return anything, it is discarded).
    """

    name: str

    def generate(self, image_rgb: np.ndarray, boxes_xyxy: np.ndarray, prompt: str, max_new_tokens: int = 512) -> str:
        """Raw model output. ``boxes_xyxy`` is exactly the list the answer's indices refer to."""
        ...


@dataclass(frozen=True)
class SelectionPolicy:
    """Score threshold, NMS and the top-K cap applied to every backend's raw output.

    The limits are :func:`~chatrex_ros.core.proposals.select_proposals`' own (ValueError when out of range).
    """

    min_score: float = DEFAULT_MIN_SCORE
    nms_iou: float = DEFAULT_NMS_IOU
    max_count: int = MAX_PROPOSALS

    def __post_init__(self) -> None:
        check_selection(self.min_score, self.nms_iou, self.max_count)


class ProposalPipeline:
    """backend.propose -> select_proposals: the one way proposals are made (nodes, eval, CLI)."""

    def __init__(self, backend: ProposalBackend, policy: SelectionPolicy | None = None) -> None:
        self.backend = backend
        self.policy = policy or SelectionPolicy()

    def warmup(self) -> None:
        """One inference before serving: the backend's own ``warmup()`` when it has one, else one blank frame."""
        warmup = getattr(self.backend, "warmup", None)
        if callable(warmup):
            warmup()
        else:
            self.run(np.zeros((*WARMUP_HW, 3), dtype=np.uint8))

    def run(self, image_rgb: np.ndarray) -> Proposals:
        """Propose boxes for an (H, W, 3) RGB image and apply the selection policy, with timings."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.shape[0] == 0 or image_rgb.shape[1] == 0:
            raise ValueError(f"expected a non-empty (H, W, 3) RGB image, got shape {image_rgb.shape}")
        start = time.perf_counter()
        raw = self.backend.propose(image_rgb)
        inferred = time.perf_counter()
        keep = select_proposals(
            raw.boxes, raw.scores, self.policy.min_score, self.policy.nms_iou, self.policy.max_count
        )
        boxes = np.ascontiguousarray(np.asarray(raw.boxes, dtype=np.float32)[keep]).reshape(-1, 4)
        scores = np.ascontiguousarray(np.asarray(raw.scores, dtype=np.float32)[keep]).reshape(-1)
        done = time.perf_counter()
        return Proposals(
            boxes=boxes,
            scores=scores,
            backend=self.backend.name,
            inference_ms=(inferred - start) * 1e3,
            timings_ms={"infer": (inferred - start) * 1e3, "select": (done - inferred) * 1e3},
        )
