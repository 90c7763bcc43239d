"""rosbag2 reading and writing (sqlite3 and mcap) with ``rosbags``: no ROS installation, no DDS.

``rosbags`` (de)serialises CDR itself from message definitions, so our own messages need no build:
they are registered in its typestore from the ``.msg`` files, and a bag recorded by the nodes carries
their definitions anyway (read from the bag when our files are not found). Errors are
:class:`BagError` (a ValueError) naming the bag and what to do.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatrex_ros.core.images import array_to_compressed, decode_rgb
from chatrex_ros.core.stamps import ns_to_sec_nanosec, sec_nanosec_to_ns, stamp_to_ns
from chatrex_ros.eval.groundtruth import GroundTruth, GroundTruthImage, GroundTruthObject, normalise_label
from chatrex_ros.eval.records import AnswerRecord, ProposalRecord
from chatrex_ros.names import GROUND_TRUTH_TOPIC

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ANSWER_TYPE = "chatrex_ros/msg/Answer"
PROPOSALS_TYPE = "chatrex_ros/msg/ProposalArray"
OUR_MESSAGES = ("Detection", "Group", "ProposalArray", "Query", "Answer", "GraspTarget")
STORAGES = ("mcap", "sqlite3")
IMAGE_ENCODINGS = ("rgb8", "jpeg")
"""What :meth:`BagWriter.write_image` writes: raw ``Image`` messages or jpeg ``CompressedImage`` ones."""
MSG_DIR_ENV = "CHATREX_ROS_MSG_DIR"


class BagError(ValueError):
    """A bag that cannot be read or written as asked (missing, corrupt, wrong topic)."""


def _import_rosbags() -> Any:
    try:
        import rosbags.rosbag2 as rosbag2
    except ImportError as error:
        raise ImportError("reading and writing bags needs rosbags: pip install rosbags") from error
    return rosbag2


# --- typestore ------------------------------------------------------------------------------------
def find_msg_dir() -> Path | None:
    """Where our ``.msg`` files are: $CHATREX_ROS_MSG_DIR, the source tree, or an install's share/."""
    candidates = []
    if os.environ.get(MSG_DIR_ENV):
        candidates.append(Path(os.environ[MSG_DIR_ENV]))
    candidates.append(Path(__file__).resolve().parents[2] / "msg")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    candidates.extend(Path(prefix) / "share" / "chatrex_ros" / "msg" for prefix in prefixes)
    return next((c for c in candidates if (c / "Answer.msg").is_file()), None)


def make_typestore(msg_dir: Path | None = None, require_ours: bool = False) -> Any:
    """ROS 2 standard types plus ours (all registered together: Answer nests Group and Detection).

    ``require_ours``: raise when our ``.msg`` files cannot be found (writing our messages needs them).
    """
    _import_rosbags()
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    typestore = get_typestore(Stores.LATEST)
    msg_dir = msg_dir or find_msg_dir()
    if msg_dir is None:
        if require_ours:
            raise BagError(f"cannot find chatrex_ros .msg files; set {MSG_DIR_ENV} to the package's msg/ directory")
        return typestore
    types: dict[str, Any] = {}
    for name in OUR_MESSAGES:
        path = Path(msg_dir) / f"{name}.msg"
        if path.is_file():
            types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"chatrex_ros/msg/{name}"))
    typestore.register(types)
    return typestore


def header_stamp_ns(raw: bytes | memoryview) -> int:
    """Stamp of a CDR message whose first field is a std_msgs/Header, without deserialising it.

    The stamp sits right after the 4-byte encapsulation header (int32 sec, uint32 nanosec), in the byte
    order the encapsulation declares. Matching stamps this way costs microseconds per image, so the
    evaluation only deserialises the frames it scores.
    """
    if len(raw) < 12:
        raise BagError(f"message of {len(raw)} bytes is too short to hold a header stamp")
    order = "<" if raw[1] & 1 else ">"
    sec, nanosec = struct.unpack_from(order + "iI", raw, 4)
    return sec_nanosec_to_ns(sec, nanosec)


# --- reading --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicInfo:
    """A topic of the bag: its message type and how many messages it has (over all its connections)."""

    msgtype: str
    count: int


@dataclass(frozen=True)
class ImageFrame:
    """One image message of the bag; ``rgb()`` decodes it (zero-copy for rgb8)."""

    stamp_ns: int
    frame_id: str
    log_time_ns: int
    message: Any

    @property
    def width(self) -> int:
        """Image width in pixels (0 when the message has none, e.g. a CompressedImage)."""
        return int(getattr(self.message, "width", 0))

    @property
    def height(self) -> int:
        """Image height in pixels (0 when the message has none, e.g. a CompressedImage)."""
        return int(getattr(self.message, "height", 0))

    def rgb(self) -> np.ndarray:
        """The image decoded to an (H, W, 3) uint8 RGB array."""
        return decode_rgb(self.message)


class BagReader:
    """A rosbag2 (directory, or a single .mcap / .db3 file) opened for reading; use as a context manager."""

    def __init__(self, path: str | Path, typestore: Any | None = None) -> None:
        rosbag2 = _import_rosbags()
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        try:
            self._reader = rosbag2.Reader(self.path)
            self._reader.open()
        except Exception as error:  # rosbags raises several types for unreadable input
            raise BagError(
                f"cannot open bag {self.path}: {error} (is it a complete, uncorrupted rosbag2: a directory with "
                "metadata.yaml, or a .mcap / .db3 file?)"
            ) from error
        self.typestore = typestore or make_typestore()
        self._register_bag_types()

    def _register_bag_types(self) -> None:
        """Types the bag defines but our typestore lacks (e.g. ours when the .msg files are not found)."""
        from rosbags.typesys import get_types_from_msg

        types: dict[str, Any] = {}
        for connection in self._reader.connections:
            if connection.msgtype in self.typestore.types or not connection.msgdef.data:
                continue
            try:
                types.update(get_types_from_msg(connection.msgdef.data, connection.msgtype))
            except Exception:  # an IDL or odd definition: that topic just cannot be deserialised
                continue
        if types:
            self.typestore.register({k: v for k, v in types.items() if k not in self.typestore.types})

    def close(self) -> None:
        """Close the bag."""
        self._reader.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def storage(self) -> str:
        """'mcap' or 'sqlite3', from the data files' suffixes."""
        files = list(self.path.iterdir()) if self.path.is_dir() else [self.path]
        suffixes = {f.suffix for f in files}
        return "mcap" if ".mcap" in suffixes else "sqlite3" if ".db3" in suffixes else "unknown"

    @property
    def topics(self) -> dict[str, TopicInfo]:
        """Every topic of the bag by name, with its type and message count."""
        info: dict[str, TopicInfo] = {}
        for connection in self._reader.connections:
            previous = info.get(connection.topic)
            count = connection.msgcount + (previous.count if previous else 0)
            info[connection.topic] = TopicInfo(connection.msgtype, count)
        return info

    def topics_of_type(self, *msgtypes: str) -> list[str]:
        """The sorted names of the topics whose type is one of ``msgtypes``."""
        return sorted(topic for topic, info in self.topics.items() if info.msgtype in msgtypes)

    def require_topic(self, topic: str, msgtypes: Sequence[str]) -> None:
        """BagError unless the bag has ``topic`` with one of ``msgtypes``; the message lists what it has."""
        topics = self.topics
        if topic not in topics:
            listing = ", ".join(f"{t} ({i.msgtype})" for t, i in sorted(topics.items())) or "none"
            raise BagError(f"bag {self.path} has no topic {topic!r}; its topics: {listing}")
        if topics[topic].msgtype not in msgtypes:
            raise BagError(
                f"topic {topic!r} in {self.path} is {topics[topic].msgtype}, expected {' or '.join(msgtypes)}"
            )

    def image_topic(self, requested: str | None = None) -> str:
        """The given topic (checked), or the only colour image topic (depth topics are ignored)."""
        if requested:
            self.require_topic(requested, IMAGE_TYPES)
            return requested
        images = self.topics_of_type(*IMAGE_TYPES)
        colour = [t for t in images if "depth" not in t.lower()]
        if len(colour) == 1:
            return colour[0]
        if not colour:
            raise BagError(
                f"bag {self.path} has no image topic ({' or '.join(IMAGE_TYPES)}); topics: {sorted(self.topics)}"
            )
        raise BagError(f"bag {self.path} has several image topics {colour}; choose one with --image-topic")

    def raw(self, topic: str) -> Iterator[tuple[int, memoryview | bytes]]:
        """(log time ns, CDR bytes) in log-time order."""
        connections = [c for c in self._reader.connections if c.topic == topic]
        if not connections:
            raise BagError(f"bag {self.path} has no topic {topic!r}")
        try:
            for _, log_time, data in self._reader.messages(connections=connections):
                yield log_time, data
        except BagError:
            raise
        except Exception as error:
            raise BagError(f"bag {self.path} is corrupt or truncated while reading {topic!r}: {error}") from error

    def deserialize(self, data: memoryview | bytes, topic: str) -> Any:
        """One CDR message of ``topic`` as a rosbags message object; BagError when it cannot be decoded."""
        msgtype = self.topics[topic].msgtype
        try:
            return self.typestore.deserialize_cdr(data, msgtype)
        except KeyError:
            raise BagError(
                f"no definition for {msgtype} (topic {topic!r}); set {MSG_DIR_ENV} for chatrex_ros messages"
            ) from None
        except Exception as error:
            raise BagError(f"cannot deserialise a {msgtype} message of {topic!r} in {self.path}: {error}") from error

    def messages(self, topic: str) -> Iterator[tuple[int, Any]]:
        """(log time ns, deserialised message)."""
        for log_time, data in self.raw(topic):
            yield log_time, self.deserialize(data, topic)

    def image_stamps(self, topic: str) -> list[int]:
        """Header stamps of every image on ``topic`` (cheap: no deserialisation)."""
        return [header_stamp_ns(data) for _, data in self.raw(topic)]

    def image_frames(self, topic: str, stamps_ns: set[int] | None = None) -> Iterator[ImageFrame]:
        """Image messages in bag order; with ``stamps_ns`` only those stamps are deserialised."""
        for log_time, data in self.raw(topic):
            if stamps_ns is not None and header_stamp_ns(data) not in stamps_ns:
                continue
            msg = self.deserialize(data, topic)
            yield ImageFrame(stamp_to_ns(msg.header.stamp), str(msg.header.frame_id), log_time, msg)

    def answers(self, topic: str) -> list[AnswerRecord]:
        """Every Answer on ``topic``, in log-time order, as records."""
        self.require_topic(topic, (ANSWER_TYPE,))
        return [AnswerRecord.from_message(msg, log_time) for log_time, msg in self.messages(topic)]

    def proposals(self, topic: str) -> list[ProposalRecord]:
        """Every ProposalArray on ``topic``, in log-time order, as records."""
        self.require_topic(topic, (PROPOSALS_TYPE,))
        # An on-demand proposer's reply that it could not compute a frame is no proposal list (bags recorded
        # before the field have none).
        return [
            ProposalRecord.from_message(msg, log_time)
            for log_time, msg in self.messages(topic)
            if not getattr(msg, "unmet_reason", "")
        ]

    def ground_truth(self, topic: str = GROUND_TRUTH_TOPIC, image_topic: str | None = None) -> GroundTruth:
        """Ground truth from a topic of Answer messages, one per annotated image.

        Each message has one detection per object, label = category name (see
        :func:`chatrex_ros.eval.records.ground_truth_record`).

        Image ids are 1.. in stamp order; sizes come from ``image_topic`` when given (0 otherwise: only
        COCO's ``images`` entries carry them and no metric uses them).
        """
        records = sorted(self.answers(topic), key=lambda r: r.stamp_ns)
        if not records:
            raise BagError(f"ground-truth topic {topic!r} in {self.path} has no messages")
        sizes: dict[int, tuple[int, int]] = {}
        if image_topic:
            wanted = {r.stamp_ns for r in records}
            sizes = {f.stamp_ns: (f.width, f.height) for f in self.image_frames(image_topic, wanted)}
        images: list[GroundTruthImage] = []
        objects: list[GroundTruthObject] = []
        for image_id, record in enumerate(records, start=1):
            width, height = sizes.get(record.stamp_ns, (0, 0))
            images.append(GroundTruthImage(image_id, record.stamp_ns, width, height))
            first_id = len(objects) + 1
            objects.extend(
                GroundTruthObject(first_id + i, image_id, normalise_label(d.label), d.box)
                for i, d in enumerate(record.detections)
            )
        return GroundTruth(images, objects, f"{self.path}:{topic}")


# --- writing --------------------------------------------------------------------------------------
class BagWriter:
    """A new rosbag2 (mcap by default, or sqlite3); use as a context manager."""

    def __init__(self, path: str | Path, storage: str = "mcap", typestore: Any | None = None) -> None:
        rosbag2 = _import_rosbags()
        if storage not in STORAGES:
            raise BagError(f"unknown bag storage {storage!r}; choose one of {', '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(
                f"{self.path} already exists; rosbag2 writers never overwrite (remove it or choose another path)"
            )
        plugin = rosbag2.StoragePlugin.MCAP if storage == "mcap" else rosbag2.StoragePlugin.SQLITE3
        self._writer = rosbag2.Writer(self.path, version=rosbag2.Writer.VERSION_LATEST, storage_plugin=plugin)
        self.typestore = typestore or make_typestore(require_ours=False)
        self._connections: dict[str, Any] = {}
        self._writer.open()

    def close(self) -> None:
        """Finish the bag (writes its metadata); nothing can be written after."""
        self._writer.close()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _type(self, name: str) -> Any:
        try:
            return self.typestore.types[name]
        except KeyError:
            raise BagError(f"no definition for {name}; set {MSG_DIR_ENV} to chatrex_ros' msg/ directory") from None

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        sec, nanosec = ns_to_sec_nanosec(stamp_ns)
        time_type = self._type("builtin_interfaces/msg/Time")
        return self._type("std_msgs/msg/Header")(stamp=time_type(sec=sec, nanosec=nanosec), frame_id=frame_id)

    def write(self, topic: str, msgtype: str, msg: Any, log_time_ns: int) -> None:
        """Serialise ``msg`` onto ``topic`` at ``log_time_ns``; a topic keeps the type of its first message."""
        connection = self._connections.get(topic)
        if connection is None:
            self._type(msgtype)
            connection = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = connection
        elif connection.msgtype != msgtype:
            raise BagError(f"topic {topic!r} already carries {connection.msgtype}, cannot also write {msgtype}")
        self._writer.write(connection, int(log_time_ns), self.typestore.serialize_cdr(msg, msgtype))

    def write_image(
        self,
        topic: str,
        rgb: np.ndarray,
        stamp_ns: int,
        frame_id: str,
        log_time_ns: int | None = None,
        encoding: str = "rgb8",
        jpeg_quality: int = 90,
    ) -> None:
        """An image stamped ``stamp_ns`` (logged at that time unless given).

        ``encoding`` "rgb8" writes a ``sensor_msgs/Image``; "jpeg" a ``sensor_msgs/CompressedImage`` (what
        image_transport's compressed plugin records), at ``jpeg_quality``.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"write_image takes an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
        if encoding not in IMAGE_ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(IMAGE_ENCODINGS)}, got {encoding!r}")
        log_time = stamp_ns if log_time_ns is None else log_time_ns
        header = self._header(stamp_ns, frame_id)
        if encoding == "jpeg":
            import cv2

            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # the encoder's order, converted fast rather than by a view
            _, payload = array_to_compressed(bgr, "bgr8", "jpeg", jpeg_quality)
            compressed = self._type("sensor_msgs/msg/CompressedImage")(
                header=header, format="jpeg", data=np.frombuffer(payload, dtype=np.uint8)
            )
            self.write(topic, "sensor_msgs/msg/CompressedImage", compressed, log_time)
            return
        height, width = rgb.shape[:2]
        msg = self._type("sensor_msgs/msg/Image")(
            header=header,
            height=height,
            width=width,
            encoding="rgb8",
            is_bigendian=sys.byteorder == "big",
            step=width * 3,
            data=np.ascontiguousarray(rgb).reshape(-1),
        )
        self.write(topic, "sensor_msgs/msg/Image", msg, log_time)

    def write_proposals(
        self, topic: str, record: ProposalRecord, frame_id: str, log_time_ns: int | None = None
    ) -> None:
        """A ProposalArray from ``record`` (logged when it was received, else at its stamp, unless given)."""
        msg = self._type(PROPOSALS_TYPE)(
            header=self._header(record.stamp_ns, frame_id),
            image_width=record.width,
            image_height=record.height,
            boxes=np.asarray(record.boxes, dtype=np.float32).reshape(-1),
            scores=np.asarray(record.scores, dtype=np.float32),
            granularity="fine",
            backend=record.backend,
            inference_ms=float(record.inference_ms),
            unmet_reason="",
        )
        self.write(topic, PROPOSALS_TYPE, msg, _log_time(record.stamp_ns, record.received_ns, log_time_ns))

    def write_answer(self, topic: str, record: AnswerRecord, frame_id: str, log_time_ns: int | None = None) -> None:
        """An Answer; groups are rebuilt from consecutive detections sharing a label."""
        detection_type = self._type("chatrex_ros/msg/Detection")
        group_type = self._type("chatrex_ros/msg/Group")
        groups: list[tuple[str, list[int]]] = []
        for d in record.detections:
            if not groups or groups[-1][0] != d.label:
                groups.append((d.label, []))
            groups[-1][1].append(d.proposal_index)
        sec, nanosec = ns_to_sec_nanosec(record.stamp_ns)
        msg = self._type(ANSWER_TYPE)(
            header=self._header(record.stamp_ns, frame_id),
            proposals_stamp=self._type("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec),
            query_id=record.query_id,
            task=record.task,
            question=record.question,
            text=record.text,
            raw_output=record.raw_output,
            groups=[group_type(phrase=p, indices=np.asarray(i, dtype=np.int32)) for p, i in groups],
            detections=[
                detection_type(
                    proposal_index=d.proposal_index,
                    label=d.label,
                    box=np.asarray(d.box, dtype=np.float32),
                    score=float(d.score),
                )
                for d in record.detections
            ],
            num_proposals=record.num_proposals,
            status=record.status,
            status_message=record.status_message,
            queue_ms=0.0,
            model_ms=float(record.model_ms),
            total_ms=float(record.total_ms),
        )
        self.write(topic, ANSWER_TYPE, msg, _log_time(record.stamp_ns, record.received_ns, log_time_ns))


def _log_time(stamp_ns: int, received_ns: int | None, explicit: int | None) -> int:
    if explicit is not None:
        return explicit
    return received_ns if received_ns is not None else stamp_ns
