"""What a replay publishes: the frames of one image topic and the queries to ask about each, read up front."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

from chatrex_ros.core.answering import QueryError, QueryRequest
from chatrex_ros.core.protocol import Task
from chatrex_ros.eval.bagio import BagError, BagReader, header_stamp_ns
from chatrex_ros.eval.groundtruth import GroundTruth, ReferringQuery, match_stamps
from chatrex_ros.eval.records import evaluation_requests
from chatrex_ros.replay.options import ReplayError

ASK_QUERY_PREFIX = "replay-ask/"
"""Query ids of ``--ask`` queries (``replay-ask/<frame index>``); ``eval --answers`` counts but does not score them."""


@dataclass(frozen=True)
class ReplayFrame:
    """One image message of the bag and the queries to ask about it (id, request), in asking order."""

    index: int
    stamp_ns: int
    log_time_ns: int
    queries: tuple[tuple[str, QueryRequest], ...] = ()


@dataclass(frozen=True)
class ReplayPlan:
    """The frames of one image topic, read before anything is published (a corrupt bag fails here)."""

    bag: Path
    image_topic: str
    image_type: str
    frames: tuple[ReplayFrame, ...]

    @property
    def query_count(self) -> int:
        """How many queries the whole replay asks."""
        return sum(len(frame.queries) for frame in self.frames)


def plan_replay(
    bag: str | Path,
    image_topic: str | None = None,
    gt: GroundTruth | None = None,
    referring: Sequence[ReferringQuery] = (),
    ask: str = "",
    stamp_tolerance_ns: int = 0,
    max_frames: int | None = None,
) -> ReplayPlan:
    """Frames of ``image_topic`` (default: the bag's only colour image topic) with their queries.

    With ``gt``, every frame matched to a ground-truth image gets the evaluation queries
    (:func:`chatrex_ros.eval.records.evaluation_requests`: the detection query, then its referring ones);
    ``ask`` ("cup; the red mug") adds one detect query per frame. Only header stamps are read here (no
    deserialisation), but every message is touched once, so truncation shows up before replaying.
    """
    if max_frames is not None and max_frames < 1:
        raise ReplayError(f"--max-frames must be >= 1, got {max_frames}")
    if referring and gt is None:
        raise ReplayError("referring queries need the ground truth they refer to (--gt)")
    ask_request = _ask_request(ask) if ask.strip() else None
    with BagReader(bag) as reader:
        topic = reader.image_topic(image_topic)
        image_type = reader.topics[topic].msgtype
        timeline = [(log_time, header_stamp_ns(data)) for log_time, data in reader.raw(topic)]
    if not timeline:
        raise BagError(f"image topic {topic!r} of {bag} has no messages")
    timeline = timeline[:max_frames] if max_frames else timeline
    matched = match_stamps(gt, [stamp for _, stamp in timeline], stamp_tolerance_ns) if gt is not None else {}
    asked_images: set[int] = set()
    frames = []
    for index, (log_time, stamp) in enumerate(timeline):
        queries: list[tuple[str, QueryRequest]] = []
        image = matched.get(stamp)
        if image is not None and image.id not in asked_images:  # repeated stamps: ask once, ids stay unique
            asked_images.add(image.id)
            queries.extend(evaluation_requests(gt, image.id, referring))  # type: ignore[arg-type]
        if ask_request is not None:
            queries.append((f"{ASK_QUERY_PREFIX}{index}", ask_request))
        frames.append(ReplayFrame(index, stamp, log_time, tuple(queries)))
    return ReplayPlan(Path(bag), topic, image_type, tuple(frames))


def _ask_request(phrases: str) -> QueryRequest:
    try:
        return QueryRequest.create(Task.DETECT, text=phrases)
    except QueryError as error:
        raise ReplayError(f"--ask {phrases!r}: {error}") from None


def frame_data(plan: ReplayPlan) -> Generator[tuple[ReplayFrame, bytes], None, None]:
    """The planned frames with their CDR bytes, streamed (a long bag is never held in memory)."""
    with BagReader(plan.bag) as reader:
        stream = reader.raw(plan.image_topic)
        for frame in plan.frames:
            try:
                _, data = next(stream)
            except StopIteration:
                raise BagError(
                    f"bag {plan.bag} ended after {frame.index} images; was it modified during the replay?"
                ) from None
            yield frame, bytes(data)
