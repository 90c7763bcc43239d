"""How to replay: the options of ``chatrex-ros replay`` and the error a replay that cannot start raises."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from chatrex_ros.eval.bagio import STORAGES
from chatrex_ros.names import GRAPH_NAMESPACE


class ReplayError(ValueError):
    """Replay cannot start as asked: bad options, nothing listening, a bag without the topic."""


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay; see ``chatrex-ros replay --help`` for each field."""

    rate: float = 1.0
    step: bool = False
    namespace: str = GRAPH_NAMESPACE
    image_out: str | None = None  # publish the images here instead of on the bag's topic name
    record: Path | None = None
    storage: str = "mcap"
    record_images: bool = True
    clock: bool = True
    clock_hz: float = 50.0
    wait_s: float = 10.0
    delay_s: float = 0.0  # after the graph is there: /clock held at the first frame, nothing published
    frame_timeout_s: float = 120.0
    drain_s: float = 10.0

    def validate(self) -> None:
        """Raise :class:`ReplayError` naming the first bad option (before any bag is read)."""
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ReplayError(f"--rate must be a positive number, got {self.rate}")
        for name in ("clock_hz", "frame_timeout_s", "drain_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ReplayError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        for name, flag in (("wait_s", "--wait"), ("delay_s", "--delay")):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ReplayError(f"{flag} must be >= 0 seconds, got {value}")
        if self.storage not in STORAGES:
            raise ReplayError(f"unknown bag storage {self.storage!r}; choose one of {', '.join(STORAGES)}")
        if not self.namespace.startswith("/"):
            raise ReplayError(f"--namespace must be absolute (start with '/'), got {self.namespace!r}")
        if self.image_out is not None and not self.image_out.startswith("/"):
            raise ReplayError(f"--image-out must be an absolute topic name, got {self.image_out!r}")
        if self.record is not None and Path(self.record).exists():
            raise ReplayError(f"--record {self.record} already exists; rosbag2 bags are never overwritten")

    def topic(self, name: str) -> str:
        """The nodes' topic ``name`` in the replay's namespace (``query`` -> ``/chatrex/query``)."""
        return f"{self.namespace.rstrip('/')}/{name}"
