"""Ground truth for offline evaluation: COCO-format boxes tied to bag images by their header stamp.

Stamp convention
----------------
A COCO file says which picture an annotation belongs to by ``images[i].id``; a bag says it by the
image message's ``header.stamp``. We join the two with one extra field per COCO image:

* ``"stamp_ns"``: int, nanoseconds since the epoch, equal to ``header.stamp.sec * 10**9 +
  header.stamp.nanosec`` of the image message it annotates (``{"stamp": {"sec": S, "nanosec": N}}``
  is accepted as well).

Stamps, not bag receive times, because the stamp is what every output of the graph carries (proposals
and answers copy the image header), so the same ground truth scores both the offline evaluation and
answers recorded from the running nodes. ``match_stamps`` pairs them, exactly or within a tolerance.

Referring queries live in a second small JSON file (see :func:`load_queries`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatrex_ros.core.stamps import sec_nanosec_to_ns


@dataclass(frozen=True)
class GroundTruthImage:
    """One annotated frame."""

    id: int
    stamp_ns: int
    width: int
    height: int
    file_name: str = ""


@dataclass(frozen=True)
class GroundTruthObject:
    """One annotated box, x1 y1 x2 y2 in the frame's pixels."""

    id: int
    image_id: int
    category: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class ReferringQuery:
    """A referring expression whose single correct answer is one annotation, or, ``negative``, no box at all.

    A negative query names something absent from the image (``annotation_id`` None): the right answer is
    to ground nothing, which is what rejection accuracy measures.
    """

    id: str
    image_id: int
    phrase: str
    annotation_id: int | None
    negative: bool = False

    def __post_init__(self) -> None:
        if self.negative != (self.annotation_id is None):
            raise ValueError(
                f"referring query {self.id!r}: a negative query has no annotation_id, a positive one needs one"
            )


def normalise_label(label: str) -> str:
    """Category names and model phrases are compared case- and spacing-insensitively."""
    return " ".join(str(label).lower().split())


class GroundTruth:
    """Annotated frames, their objects and the category vocabulary; immutable after construction."""

    def __init__(
        self, images: Iterable[GroundTruthImage], objects: Iterable[GroundTruthObject], source: str = ""
    ) -> None:
        self.source = source
        self.images: tuple[GroundTruthImage, ...] = tuple(sorted(images, key=lambda image: image.stamp_ns))
        if not self.images:
            raise ValueError(f"ground truth {source}: no images")
        self._by_id = {image.id: image for image in self.images}
        if len(self._by_id) != len(self.images):
            raise ValueError(f"ground truth {source}: duplicate image ids")
        self._by_stamp = {image.stamp_ns: image for image in self.images}
        if len(self._by_stamp) != len(self.images):
            stamps = [image.stamp_ns for image in self.images]
            duplicate = next(s for s in stamps if stamps.count(s) > 1)
            raise ValueError(f"ground truth {source}: two images share stamp_ns {duplicate}; stamps must be unique")
        per_image: dict[int, list[GroundTruthObject]] = {image.id: [] for image in self.images}
        seen_ids: set[int] = set()
        for obj in objects:
            if obj.image_id not in per_image:
                raise ValueError(f"ground truth {source}: annotation {obj.id} refers to unknown image {obj.image_id}")
            if obj.id in seen_ids:
                raise ValueError(f"ground truth {source}: duplicate annotation id {obj.id}")
            seen_ids.add(obj.id)
            per_image[obj.image_id].append(obj)
        self._objects = {image_id: tuple(objs) for image_id, objs in per_image.items()}
        self._object_by_id = {obj.id: obj for objs in self._objects.values() for obj in objs}
        # Category order is first appearance over stamp-ordered frames: stable, so prompts are deterministic.
        self.categories: tuple[str, ...] = tuple(
            dict.fromkeys(obj.category for image in self.images for obj in self._objects[image.id])
        )

    # --- lookup ----------------------------------------------------------------------------------
    def image(self, image_id: int) -> GroundTruthImage:
        """The frame with COCO id ``image_id``; ValueError when there is none."""
        try:
            return self._by_id[image_id]
        except KeyError:
            raise ValueError(f"ground truth has no image with id {image_id}") from None

    def image_at(self, stamp_ns: int) -> GroundTruthImage | None:
        """The frame annotated at exactly ``stamp_ns``, or None."""
        return self._by_stamp.get(int(stamp_ns))

    def objects(self, image_id: int) -> tuple[GroundTruthObject, ...]:
        """The annotated objects of one frame, in file order."""
        return self._objects[image_id]

    def object(self, annotation_id: int) -> GroundTruthObject:
        """The annotation with id ``annotation_id``; ValueError when there is none."""
        try:
            return self._object_by_id[annotation_id]
        except KeyError:
            raise ValueError(f"ground truth has no annotation with id {annotation_id}") from None

    def boxes(self, image_id: int) -> np.ndarray:
        """(N, 4) float64 x1 y1 x2 y2 of one frame's objects."""
        return np.asarray([obj.box for obj in self._objects[image_id]], dtype=np.float64).reshape(-1, 4)

    def labels(self, image_id: int) -> list[str]:
        """The category of each of one frame's objects, in the order of :meth:`boxes`."""
        return [obj.category for obj in self._objects[image_id]]

    def frame_categories(self, image_id: int) -> tuple[str, ...]:
        """The category names present in a frame, in vocabulary order: the detection prompt's targets."""
        present = {obj.category for obj in self._objects[image_id]}
        return tuple(name for name in self.categories if name in present)

    @property
    def stamps_ns(self) -> np.ndarray:
        """The frames' stamps as int64 nanoseconds, ascending (the order of ``images``)."""
        return np.asarray([image.stamp_ns for image in self.images], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    # --- COCO ------------------------------------------------------------------------------------
    def to_coco(self, class_agnostic: bool = False) -> dict[str, Any]:
        """A COCO dict for the COCO evaluator; ``class_agnostic`` folds every category into one ("object")."""
        names = ("object",) if class_agnostic else self.categories
        category_id = {name: index + 1 for index, name in enumerate(names)}
        annotations = []
        for obj in self._object_by_id.values():
            x1, y1, x2, y2 = obj.box
            annotations.append(
                {
                    "id": obj.id,
                    "image_id": obj.image_id,
                    "category_id": 1 if class_agnostic else category_id[obj.category],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        return {
            "images": [
                {"id": i.id, "width": i.width, "height": i.height, "file_name": i.file_name} for i in self.images
            ],
            "annotations": annotations,
            "categories": [{"id": category_id[name], "name": name} for name in names],
        }

    @classmethod
    def from_coco(cls, data: Mapping[str, Any], source: str = "<dict>") -> GroundTruth:
        """Validate a COCO dict with the stamp extension (module docstring); ValueErrors name the entry."""
        if not isinstance(data, Mapping):
            raise ValueError(f"ground truth {source}: expected a JSON object with images/annotations/categories")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"ground truth {source}: missing or non-list '{key}' (COCO format)")
        names: dict[int, str] = {}
        for entry in data["categories"]:
            if not isinstance(entry, Mapping) or "id" not in entry or not str(entry.get("name", "")).strip():
                raise ValueError(f"ground truth {source}: category {entry!r} needs an 'id' and a non-empty 'name'")
            names[int(entry["id"])] = normalise_label(entry["name"])
        images = [_coco_image(entry, source) for entry in data["images"]]
        objects = []
        for entry in data["annotations"]:
            try:
                category = names[int(entry["category_id"])]
                x, y, w, h = (float(v) for v in entry["bbox"])
                obj = GroundTruthObject(int(entry["id"]), int(entry["image_id"]), category, (x, y, x + w, y + h))
            except KeyError as error:
                raise ValueError(f"ground truth {source}: annotation {entry!r} lacks or mis-refers {error}") from None
            except (TypeError, ValueError):
                raise ValueError(
                    f"ground truth {source}: annotation {entry!r} needs bbox [x, y, w, h] of numbers"
                ) from None
            if not all(math.isfinite(v) for v in obj.box) or w <= 0 or h <= 0:
                raise ValueError(
                    f"ground truth {source}: annotation {obj.id} has an empty or non-finite bbox {entry['bbox']}"
                )
            if entry.get("iscrowd", 0):
                raise ValueError(
                    f"ground truth {source}: annotation {obj.id} is a crowd region; crowd boxes are not supported"
                )
            objects.append(obj)
        return cls(images, objects, source)

    @classmethod
    def load(cls, path: str | Path) -> GroundTruth:
        """Read and validate a COCO JSON file with the stamp extension (see :meth:`from_coco`)."""
        return cls.from_coco(_read_json(path, "ground truth"), str(path))


def _coco_image(entry: Any, source: str) -> GroundTruthImage:
    if not isinstance(entry, Mapping) or "id" not in entry:
        raise ValueError(f"ground truth {source}: image entry {entry!r} has no 'id'")
    if "stamp_ns" in entry:
        stamp = entry["stamp_ns"]
    elif isinstance(entry.get("stamp"), Mapping):
        stamp = sec_nanosec_to_ns(entry["stamp"].get("sec", 0), entry["stamp"].get("nanosec", 0))
    else:
        raise ValueError(
            f"ground truth {source}: image {entry['id']} has no 'stamp_ns' (int nanoseconds of the image "
            "message's header.stamp); it is how COCO images are matched to bag messages"
        )
    if isinstance(stamp, bool) or not isinstance(stamp, int) or stamp < 0:
        raise ValueError(
            f"ground truth {source}: image {entry['id']} stamp_ns must be a non-negative int, got {stamp!r}"
        )
    try:
        width, height = int(entry["width"]), int(entry["height"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"ground truth {source}: image {entry['id']} needs integer 'width' and 'height'") from None
    return GroundTruthImage(int(entry["id"]), stamp, width, height, str(entry.get("file_name", "")))


def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} file {path} is not valid JSON: {error}") from None


def parse_queries(data: Any, gt: GroundTruth, source: str = "<dict>") -> tuple[ReferringQuery, ...]:
    """``{"queries": [{"id", "image_id", "phrase", "annotation_id"}, ...]}``, checked against ``gt``.

    A negative query, ``{"id", "image_id", "phrase", "negative": true}``, has no ``annotation_id``: its
    phrase names nothing in the image, so it must not be one of the image's own category names.
    """
    entries = data.get("queries") if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
        raise ValueError(f"queries {source}: expected {{'queries': [...]}} or a list of queries")
    queries = []
    for position, entry in enumerate(entries):
        query = _parse_query(entry, position, source)
        if not query.phrase:
            raise ValueError(f"queries {source}: query {query.id!r} has an empty phrase")
        gt.image(query.image_id)
        if query.annotation_id is not None and gt.object(query.annotation_id).image_id != query.image_id:
            raise ValueError(
                f"queries {source}: query {query.id!r} targets annotation {query.annotation_id} of another image"
            )
        if query.negative and normalise_label(query.phrase) in gt.frame_categories(query.image_id):
            raise ValueError(
                f"queries {source}: negative query {query.id!r} names {query.phrase!r}, a category annotated in "
                f"image {query.image_id}"
            )
        queries.append(query)
    if len({q.id for q in queries}) != len(queries):
        raise ValueError(f"queries {source}: query ids must be unique")
    return tuple(queries)


def _parse_query(entry: Any, position: int, source: str) -> ReferringQuery:
    """One entry of a queries file as a query; ValueError naming the entry when its fields are wrong."""
    negative = entry.get("negative", False) if isinstance(entry, Mapping) else False
    if not isinstance(negative, bool):
        raise ValueError(f"queries {source}: entry {entry!r} has 'negative' {negative!r}; expected true or false")
    if negative and entry.get("annotation_id") is not None:
        raise ValueError(
            f"queries {source}: negative query {entry!r} has an annotation_id; a negative query names nothing "
            "in the image (drop 'negative' or 'annotation_id')"
        )
    try:
        return ReferringQuery(
            str(entry.get("id", position)),
            int(entry["image_id"]),
            str(entry["phrase"]).strip(),
            None if negative else int(entry["annotation_id"]),
            negative,
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        needs = "image_id and phrase" if negative else "image_id, phrase and annotation_id"
        raise ValueError(
            f'queries {source}: entry {entry!r} needs {needs} (a query without a target says "negative": true)'
        ) from None


def load_queries(path: str | Path, gt: GroundTruth) -> tuple[ReferringQuery, ...]:
    """Read a referring-queries JSON file and check it against ``gt`` (see :func:`parse_queries`)."""
    return parse_queries(_read_json(path, "queries"), gt, str(path))


def match_stamps(gt: GroundTruth, stamps_ns: Sequence[int], tolerance_ns: int = 0) -> dict[int, GroundTruthImage]:
    """Pair bag stamps with annotated frames: bag stamp -> GT image (nearest within ``tolerance_ns``).

    Each GT image is used at most once (the closest bag stamp wins). Raises ValueError when nothing
    matches, with both stamp ranges, because that almost always means a wrong bag, topic or unit.
    """
    if tolerance_ns < 0:
        raise ValueError(f"stamp tolerance must be >= 0, got {tolerance_ns} ns")
    gt_stamps = gt.stamps_ns
    best: dict[int, tuple[int, int]] = {}  # gt image id -> (distance, bag stamp)
    for stamp in stamps_ns:
        position = int(np.searchsorted(gt_stamps, stamp))
        candidates = [p for p in (position - 1, position) if 0 <= p < len(gt_stamps)]
        nearest = min(candidates, key=lambda p: (abs(int(gt_stamps[p]) - stamp), p))
        distance = abs(int(gt_stamps[nearest]) - int(stamp))
        if distance <= tolerance_ns:
            image = gt.images[nearest]
            if image.id not in best or distance < best[image.id][0]:
                best[image.id] = (distance, int(stamp))
    if not best:
        raise ValueError(_no_match_message(gt, gt_stamps, stamps_ns, tolerance_ns))
    return {stamp: gt.image(image_id) for image_id, (_, stamp) in best.items()}


def _no_match_message(gt: GroundTruth, gt_stamps: np.ndarray, stamps_ns: Sequence[int], tolerance_ns: int) -> str:
    """Why nothing matched, with the likeliest cause first: ranges apart means other data, not jitter."""
    span = f"{min(stamps_ns)}..{max(stamps_ns)}" if len(stamps_ns) else "none"
    first, last = int(gt_stamps[0]), int(gt_stamps[-1])
    head = (
        f"no ground-truth stamp matches an image stamp (tolerance {tolerance_ns / 1e6:g} ms): ground truth "
        f"{gt.source} {first}..{last} ns, bag {span} ns ({len(stamps_ns)} images)"
    )
    if len(stamps_ns) and (min(stamps_ns) > last + 1_000_000_000 or max(stamps_ns) < first - 1_000_000_000):
        return (
            f"{head}. The two do not overlap: is it the ground truth of another bag, or another topic? "
            "(a stamp tolerance would pair unrelated frames)"
        )
    return (
        f"{head}. Check the bag/topic, that images[].stamp_ns is header.stamp in nanoseconds, or, for "
        "re-stamped images, pass --stamp-tolerance-ms"
    )


def stamp_tolerance_ns(milliseconds: float) -> int:
    """A ``--stamp-tolerance-ms`` value in nanoseconds (ValueError when negative or NaN)."""
    if not milliseconds >= 0:
        raise ValueError(f"--stamp-tolerance-ms must be >= 0, got {milliseconds}")
    return int(round(milliseconds * 1e6))
