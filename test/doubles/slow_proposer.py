"""TEST DOUBLE of a proposal model that is slower than the camera (a UPN on a small GPU, selective search on a
big frame): it sleeps ``delay_s`` per frame and returns a fixed grid of boxes, so the graph's own logic
(mailbox, claims, pairing, answering) runs for real at realistic latencies without a model.
"""

from __future__ import annotations

import time

import numpy as np

from chatrex_ros.core.types import RawProposals


class SlowProposer:
    name = "slow_test_double"

    def __init__(self, delay_s: float = 1.0, count: int = 12) -> None:
        self.delay_s = delay_s
        self.count = count

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        time.sleep(self.delay_s)
        height, width = image_rgb.shape[:2]
        k = np.arange(self.count, dtype=np.float32)
        x1 = (k % 4) * width / 4
        y1 = (k // 4 % 3) * height / 3
        boxes = np.stack([x1, y1, x1 + width / 4 - 1, y1 + height / 3 - 1], axis=1).astype(np.float32)
        scores = np.linspace(0.99, 0.5, self.count, dtype=np.float32)
        return RawProposals(boxes=boxes, scores=scores)
