"""Weight-free proposal backend: OpenCV selective search on a downscaled copy of the frame.

It runs anywhere (no model file, no GPU) so the whole graph works out of the box. Selective search returns
regions without confidences; a box's score is its rank-decayed position in the algorithm's output (earlier
regions come from larger, more coherent merges), which gives the shared selection policy something monotonic
to threshold and sort by.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import numpy as np

from chatrex_ros.core.types import RawProposals


def _libc_srand() -> Callable[[int], None] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None).srand
    except (OSError, AttributeError):
        return None


_SRAND = _libc_srand()


class SelectiveSearchBackend:
    """``cv2.ximgproc.segmentation`` selective search (opencv-contrib) as a :class:`ProposalBackend`."""

    name = "selective_search"

    def __init__(
        self,
        long_side: int = 400,
        mode: str = "fast",
        min_box_fraction: float = 0.0005,
        max_candidates: int = 900,
    ) -> None:
        try:
            import cv2
            from cv2 import ximgproc  # noqa: F401  (only opencv-contrib has it)
        except (ImportError, AttributeError) as error:
            raise ImportError(
                "the selective_search backend needs OpenCV's contrib modules: "
                "pip install opencv-contrib-python-headless (and uninstall opencv-python, both own cv2)"
            ) from error
        if mode not in ("fast", "quality", "single"):
            raise ValueError(f"selective search mode must be 'fast', 'quality' or 'single', got {mode!r}")
        if not 64 <= long_side <= 4096:
            raise ValueError(f"long_side must be in 64..4096 px, got {long_side}")
        if not 0.0 <= min_box_fraction < 1.0:
            raise ValueError(f"min_box_fraction must be in [0, 1), got {min_box_fraction}")
        self._cv2 = cv2
        self.long_side = int(long_side)
        self.mode = mode
        self.min_box_fraction = float(min_box_fraction)
        self.max_candidates = int(max_candidates)
        cv2.setNumThreads(max(1, cv2.getNumberOfCPUs()))

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        """Rank-scored boxes for an (H, W, 3) RGB image, in its pixel coordinates; deterministic.

        OpenCV ranks regions with libc ``rand()``; reseeding makes a frame's proposals a function of its pixels
        alone, not of how many frames (or other rand() users) came before.
        """
        cv2 = self._cv2
        if _SRAND is not None:
            _SRAND(1)
        small, scale = self._downscale(image_rgb)
        search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(np.ascontiguousarray(small[:, :, ::-1]))  # OpenCV wants BGR
        {
            "fast": search.switchToSelectiveSearchFast,
            "quality": search.switchToSelectiveSearchQuality,
            "single": search.switchToSingleStrategy,
        }[self.mode]()
        rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)[: self.max_candidates]
        return self._decode(rects, scale, image_rgb.shape[1], image_rgb.shape[0])

    def _downscale(self, image_rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """Selective search is O(pixels): run it at about 400 px on the long side."""
        height, width = image_rgb.shape[:2]
        scale = min(1.0, self.long_side / max(height, width))
        if scale == 1.0:
            return image_rgb, 1.0
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return self._cv2.resize(image_rgb, size, interpolation=self._cv2.INTER_AREA), scale

    def _decode(self, rects_xywh: np.ndarray, scale: float, width: int, height: int) -> RawProposals:
        """x,y,w,h on the small image -> x1,y1,x2,y2 in original pixels; tiny boxes dropped; rank scores."""
        boxes = np.empty_like(rects_xywh)
        boxes[:, :2] = rects_xywh[:, :2] / scale
        boxes[:, 2:] = (rects_xywh[:, :2] + rects_xywh[:, 2:]) / scale
        np.clip(boxes, 0.0, [width, height, width, height], out=boxes)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = area >= self.min_box_fraction * width * height
        boxes = boxes[keep]
        scores = (1.0 / (1.0 + 0.01 * np.arange(boxes.shape[0], dtype=np.float32))).astype(np.float32)
        return RawProposals(boxes=np.ascontiguousarray(boxes), scores=scores)
