"""Weight-free proposal backend: OpenCV selective search on a downscaled copy of the frame.

It runs anywhere (no model file, no GPU) so the whole graph works out of the box. Selective search returns
regions without confidences; a box's score is its rank-decayed position in the algorithm's output (earlier
regions come from larger, more coherent merges), which gives the shared selection policy something monotonic
to threshold and sort by.

The default ``balanced`` mode runs the fast mode's two colour spaces (HSV and Lab) as two separate searches and
interleaves their rankings. Each half is single-threaded, so with ``workers=2`` one half runs in a helper
process while the other runs in the caller: about half the wall time on two cores (bench/bench_proposals.py).
A process and not a thread, because OpenCV ranks regions with libc ``rand()``, which threads share: seeded
per half, the output is the same whether one or two processes computed it. When the helper cannot run, the
backend says why (``provider``, a log line) and goes on in one process with the same output.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from chatrex_ros.core.types import RawProposals

MODES = ("balanced", "fast", "quality", "single")
"""``balanced``: the fast mode's strategies per colour space, interleaved (parallel); the others are OpenCV's."""

COLOUR_SPACES = ("hsv", "lab")
GRAPH_KS = (150, 300)  # the fast mode's graph-segmentation scales: base k 150, step 150
GRAPH_SIGMA = 0.8

_log = logging.getLogger(__name__)


def _libc_srand() -> Callable[[int], None] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None).srand
    except (OSError, AttributeError):
        return None


_SRAND = _libc_srand()


def _seed() -> None:
    """OpenCV ranks regions with libc rand(): reseed so a frame's proposals depend on its pixels alone."""
    if _SRAND is not None:
        _SRAND(1)


def _import_cv2():  # noqa: ANN202  (cv2 has no stubs worth naming)
    try:
        import cv2
        from cv2 import ximgproc  # noqa: F401  (only opencv-contrib has it)
    except (ImportError, AttributeError) as error:
        raise ImportError(
            "the selective_search backend needs OpenCV's contrib modules: "
            "pip install opencv-contrib-python-headless (and uninstall opencv-python, both own cv2)"
        ) from error
    return cv2


def search_colour_space(small_bgr: np.ndarray, space: str) -> np.ndarray:
    """One half of the balanced mode: the fast mode's graph scales and both its strategies, one colour space.

    Returns the ranked regions as an (N, 4) int32 x, y, w, h array. Runs in the caller or in a helper process.
    """
    cv2 = _import_cv2()
    segmentation = cv2.ximgproc.segmentation
    code = {"hsv": cv2.COLOR_BGR2HSV, "lab": cv2.COLOR_BGR2Lab}[space]
    search = segmentation.createSelectiveSearchSegmentation()
    search.addImage(cv2.cvtColor(small_bgr, code))
    for k in GRAPH_KS:
        search.addGraphSegmentation(segmentation.createGraphSegmentation(sigma=GRAPH_SIGMA, k=k))
    colour, fill, texture, size = (
        segmentation.createSelectiveSearchSegmentationStrategyColor(),
        segmentation.createSelectiveSearchSegmentationStrategyFill(),
        segmentation.createSelectiveSearchSegmentationStrategyTexture(),
        segmentation.createSelectiveSearchSegmentationStrategySize(),
    )
    search.addStrategy(segmentation.createSelectiveSearchSegmentationStrategyMultiple(colour, fill, texture, size))
    search.addStrategy(segmentation.createSelectiveSearchSegmentationStrategyMultiple(fill, texture, size))
    _seed()
    return np.asarray(search.process(), dtype=np.int32).reshape(-1, 4)


def interleave_rankings(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Round-robin merge of two ranked (N, 4) region lists; a region both found is kept at its first place."""
    merged = np.empty((first.shape[0] + second.shape[0], 4), dtype=first.dtype)
    common = min(first.shape[0], second.shape[0])
    merged[0 : 2 * common : 2], merged[1 : 2 * common : 2] = first[:common], second[:common]
    merged[2 * common :] = first[common:] if first.shape[0] > common else second[common:]
    _, first_seen = np.unique(merged, axis=0, return_index=True)
    return merged[np.sort(first_seen)]


class HelperFailed(RuntimeError):
    """The helper process could not run a search (it could not start, died, or answered garbage)."""


class _SearchHelper:
    """A child process that runs one colour space's search per request, over its stdin and stdout.

    A plain ``python -m`` child rather than multiprocessing: spawn would re-run the parent's ``__main__`` (a
    node's whole ROS import, or nothing at all for a script read from stdin), and fork is unsafe in a process
    that runs DDS threads. One helper serves the whole process; a caller that finds it busy searches both
    halves itself (same output), so nobody waits for another backend's frame.
    """

    _REQUEST = struct.Struct("<III")  # height, width, colour space index; then height * width * 3 bytes
    _REPLY = struct.Struct("<i")  # region count, then count * 4 int32; or -len(message), then the message

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self.failure = ""

    def _start(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            package_root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
            atexit.register(self.stop)
        return self._process

    def send(self, small_bgr: np.ndarray, space: str) -> None:
        """Start a search in the helper (collect it with :meth:`receive`)."""
        try:
            process = self._start()
            assert process.stdin is not None
            height, width = small_bgr.shape[:2]
            process.stdin.write(self._REQUEST.pack(height, width, COLOUR_SPACES.index(space)))
            process.stdin.write(np.ascontiguousarray(small_bgr, dtype=np.uint8).tobytes())
            process.stdin.flush()
        except OSError as error:
            raise HelperFailed(f"{self._exit_status()}: could not send a frame ({error})") from error

    def receive(self) -> np.ndarray:
        """The ranked regions of the search :meth:`send` started."""
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        head = stdout.read(self._REPLY.size)
        if len(head) < self._REPLY.size:
            raise HelperFailed(f"{self._exit_status()}: no reply")
        (count,) = self._REPLY.unpack(head)
        if count < 0:
            raise HelperFailed(stdout.read(-count).decode("utf-8", "replace"))
        body = stdout.read(count * 16)
        if len(body) < count * 16:
            raise HelperFailed("a truncated reply")
        return np.frombuffer(body, dtype=np.int32).reshape(count, 4)

    def _exit_status(self) -> str:
        code = None if self._process is None else self._process.poll()
        return "the helper process is not answering" if code is None else f"the helper process exited (code {code})"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()  # end of input: the helper returns
            process.wait(timeout=2.0)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()


_HELPER = _SearchHelper()


def _serve_helper() -> None:
    """The helper's side: read frames from stdin until it closes, answer each on stdout."""
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the replies
    header = _SearchHelper._REQUEST
    while len(head := requests.read(header.size)) == header.size:
        height, width, space = header.unpack(head)
        data = requests.read(height * width * 3)
        try:
            image = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
            rects = np.ascontiguousarray(search_colour_space(image, COLOUR_SPACES[space]), dtype=np.int32)
            replies.write(_SearchHelper._REPLY.pack(rects.shape[0]) + rects.tobytes())
        except Exception as error:  # report it to the parent, keep serving
            message = f"{type(error).__name__}: {error}".encode()[:1000]
            replies.write(_SearchHelper._REPLY.pack(-len(message)) + message)
        replies.flush()


class SelectiveSearchBackend:
    """``cv2.ximgproc.segmentation`` selective search (opencv-contrib) as a :class:`ProposalBackend`."""

    name = "selective_search"

    def __init__(
        self,
        long_side: int = 320,
        mode: str = "balanced",
        min_box_fraction: float = 0.0005,
        max_candidates: int = 900,
        workers: int = 2,
    ) -> None:
        cv2 = _import_cv2()
        if mode not in MODES:
            raise ValueError(f"selective search mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 64 <= long_side <= 4096:
            raise ValueError(f"long_side must be in 64..4096 px, got {long_side}")
        if not 0.0 <= min_box_fraction < 1.0:
            raise ValueError(f"min_box_fraction must be in [0, 1), got {min_box_fraction}")
        if workers not in (1, 2):
            raise ValueError(f"selective search workers must be 1 or 2 (one per colour space), got {workers}")
        self._cv2 = cv2
        self.long_side = int(long_side)
        self.mode = mode
        self.min_box_fraction = float(min_box_fraction)
        self.max_candidates = int(max_candidates)
        self.workers = int(workers) if mode == "balanced" else 1
        self.fallback_reason = ""
        """Why a balanced backend asked for two processes runs in one ('' while it does not)."""
        cv2.setNumThreads(max(1, cv2.getNumberOfCPUs()))

    @property
    def provider(self) -> str:
        """What runs the search, for the node's start-up line and /diagnostics."""
        if self.mode != "balanced":
            return f"{self.mode} mode, 1 process"
        if self.fallback_reason:
            return f"balanced mode, 1 process ({self.fallback_reason})"
        return f"balanced mode, {self.workers} process{'es' if self.workers > 1 else ''}"

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        """Rank-scored boxes for an (H, W, 3) RGB image, in its pixel coordinates; deterministic."""
        small, scale = self._downscale(image_rgb)
        bgr = np.ascontiguousarray(small[:, :, ::-1])  # OpenCV wants BGR
        rects = self._balanced(bgr) if self.mode == "balanced" else self._opencv_mode(bgr)
        return self._decode(rects[: self.max_candidates].astype(np.float32), scale, *image_rgb.shape[1::-1])

    def _opencv_mode(self, bgr: np.ndarray) -> np.ndarray:
        search = self._cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(bgr)
        {
            "fast": search.switchToSelectiveSearchFast,
            "quality": search.switchToSelectiveSearchQuality,
            "single": search.switchToSingleStrategy,
        }[self.mode]()
        _seed()
        return np.asarray(search.process(), dtype=np.int32).reshape(-1, 4)

    def _balanced(self, bgr: np.ndarray) -> np.ndarray:
        first, second = COLOUR_SPACES
        if self.workers == 1 or self.fallback_reason or not _HELPER.lock.acquire(blocking=False):
            return interleave_rankings(search_colour_space(bgr, first), search_colour_space(bgr, second))
        try:
            if _HELPER.failure:
                raise HelperFailed(_HELPER.failure)
            _HELPER.send(bgr, first)
            try:
                second_ranking = search_colour_space(bgr, second)  # meanwhile, in this process
            finally:
                first_ranking = _HELPER.receive()  # even when this half failed: no reply is left in the pipe
            return interleave_rankings(first_ranking, second_ranking)
        except HelperFailed as error:
            _HELPER.failure = _HELPER.failure or str(error)[:200]
            _HELPER.stop()
            self.fallback_reason = f"helper process failed: {_HELPER.failure}"
            _log.warning("selective search runs in one process from now on: %s", self.fallback_reason)
        finally:
            _HELPER.lock.release()
        return self._balanced(bgr)

    def _downscale(self, image_rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """Selective search is O(pixels): run it on a copy ``long_side`` px long."""
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


if __name__ == "__main__":
    _serve_helper()
