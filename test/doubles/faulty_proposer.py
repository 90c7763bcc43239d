"""TEST DOUBLE that injects a fault into the proposal node's own worker thread, to prove a dead worker is loud.

No model can kill the worker (every backend exception is caught), so this simulates a bug in the node itself:
on an all-white frame it schedules ``RuntimeError`` to be raised asynchronously in the calling (worker) thread
(``PyThreadState_SetAsyncExc``). Python delivers it when that thread next runs bytecode, which is after the next
frame wakes it, outside any backend call, where only the node's thread supervision can catch it.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from chatrex_ros.core.types import RawProposals


class InjectedFault(RuntimeError):
    """The simulated bug."""


class FaultyProposer:
    name = "faulty_test_double"

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        if image_rgb.min() == 255:
            worker = threading.get_ident()
            threading.Timer(0.2, _raise_in, args=(worker,)).start()
        height, width = image_rgb.shape[:2]
        boxes = np.array([[0, 0, width / 2, height / 2]], np.float32)
        return RawProposals(boxes=boxes, scores=np.array([0.9], np.float32))


def _raise_in(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(InjectedFault))
