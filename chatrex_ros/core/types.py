"""Plain data types shared by the core, the model backends, the evaluation and the nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_PROPOSALS = 100
"""ChatRex has 100 index tokens (``<obj0>``..``<obj99>``): never give it more boxes."""


@dataclass(frozen=True)
class RawProposals:
    """What a proposal backend returns: unfiltered boxes in ORIGINAL image pixels.

    boxes: (N, 4) float32, x1 y1 x2 y2. scores: (N,) float32 in [0, 1].
    """

    boxes: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Detection:
    """One resolved object of an answer: the proposal the model named for a phrase.

    The same names as ``chatrex_ros/msg/Detection``, in records and in the core. ChatRex does not score its
    choices, so ``score`` is the proposal's score (what the paper's mAP uses as confidence).
    """

    proposal_index: int  # <objK> -> K, an index into the proposals the model was given
    label: str  # the grounded phrase ('' for a bare mention)
    box: tuple[float, float, float, float]  # x1 y1 x2 y2, original-image pixels
    score: float


@dataclass(frozen=True)
class Proposals:
    """The selected, index-stable proposal list: row K is ``<objK>``. Nothing downstream reorders it."""

    boxes: np.ndarray  # (N, 4) float32 x1 y1 x2 y2, original-image pixels
    scores: np.ndarray  # (N,) float32, descending
    backend: str = ""
    inference_ms: float = 0.0
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])
