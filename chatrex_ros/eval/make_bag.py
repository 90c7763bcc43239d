"""A COCO-format dataset into a rosbag2 and the ground truth that scores it (``chatrex-ros make-bag``).

The dataset is an images directory and an instances JSON, optionally with RefCOCO-style referring expressions.
Images are read, encoded and written one at a time (the bag is streamed; only the small JSON outputs grow
with the dataset), stamped ``start + k / rate`` for the k-th image written, logged at their stamp. The
ground truth keeps the dataset's image, annotation and category ids and adds ``stamp_ns`` and ``frame_id``
to each image written (see :mod:`chatrex_ros.eval.groundtruth`), so ``chatrex-ros eval`` scores the bag
directly. Images that are missing or unreadable are skipped with one warning each (or fail with
``strict``); images not written are left out of the ground truth together with their annotations.

Referring queries come from the refs file, one per sentence; ``negatives`` adds, per image, category names
with no annotation in it as queries without a target (``"negative": true``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chatrex_ros.core.images import ImageFormatError, to_rgb
from chatrex_ros.eval.bagio import IMAGE_ENCODINGS, STORAGES, BagWriter
from chatrex_ros.eval.groundtruth import normalise_label

DEFAULT_TOPIC = "/camera/image_raw"
DEFAULT_FRAME_ID = "camera"
DEFAULT_RATE_HZ = 10.0
DEFAULT_JPEG_QUALITY = 90
START_STAMP_NS = 1_700_000_000_000_000_000
"""The earliest first stamp (the sample bag's epoch); each dataset's bag starts a whole number of seconds later."""
START_OFFSET_RANGE_S = 1_000_000
"""The first stamp's offset from :data:`START_STAMP_NS` is a digest of the image order modulo this (11.6 days)."""

STRICT_STOPS = "--strict stops at the first image that cannot be written"

_BAG_FILES = (".mcap", ".db3", ".yaml", ".db3-shm", ".db3-wal")
"""What a rosbag2 directory holds: ``force`` removes only a directory made of these (never a user's folder)."""


class MakeBagError(ValueError):
    """Input that cannot be converted as asked; the message names the file and what to do.

    Bad options, dataset or refs, an existing output, or (``strict``) an image that cannot be written.
    """


@dataclass(frozen=True)
class MakeBagOptions:
    """What ``make-bag`` converts and how (the CLI's options, with the same defaults)."""

    images: Path
    annotations: Path
    out: Path
    refs: Path | None = None
    gt_out: Path | None = None
    queries_out: Path | None = None
    storage: str = "mcap"
    topic: str = DEFAULT_TOPIC
    frame_id: str = DEFAULT_FRAME_ID
    limit: int | None = None
    shuffle: bool = False
    seed: int = 0
    rate_hz: float = DEFAULT_RATE_HZ
    encoding: str = "rgb8"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    negatives: int = 0
    strict: bool = False
    overwrite: bool = False
    progress: bool = True

    @property
    def gt_path(self) -> Path:
        """Where the ground truth goes (default ``<out>_annotations.json``, as ``make-sample`` names it)."""
        return self.gt_out or Path(f"{self.out}_annotations.json")

    @property
    def queries_path(self) -> Path | None:
        """Where the queries go (default ``<out>_queries.json``); None when there are none to write."""
        if self.refs is None and self.negatives == 0:
            return None
        return self.queries_out or Path(f"{self.out}_queries.json")

    def check(self) -> None:
        """MakeBagError for option values that cannot work, before anything is read or written."""
        if self.storage not in STORAGES:
            raise MakeBagError(f"unknown storage {self.storage!r}; choose one of {', '.join(STORAGES)}")
        if self.encoding not in IMAGE_ENCODINGS:
            raise MakeBagError(f"unknown encoding {self.encoding!r}; choose one of {', '.join(IMAGE_ENCODINGS)}")
        if self.limit is not None and self.limit < 1:
            raise MakeBagError(f"--limit must be >= 1, got {self.limit}")
        if not (math.isfinite(self.rate_hz) and 0 < self.rate_hz <= 1e9):
            raise MakeBagError(
                f"--rate must be a number of Hz above 0 (at most 1e9: stamps are ns), got {self.rate_hz}"
            )
        if not 0 <= self.jpeg_quality <= 100:
            raise MakeBagError(f"--jpeg-quality must be 0..100, got {self.jpeg_quality}")
        if self.negatives < 0:
            raise MakeBagError(f"--negatives must be >= 0, got {self.negatives}")
        if not self.topic.startswith("/"):
            raise MakeBagError(f"--topic must be an absolute topic name (start with '/'), got {self.topic!r}")
        if not self.images.is_dir():
            raise MakeBagError(f"--images {self.images} is not a directory")
        outputs = [self.gt_path] + ([self.queries_path] if self.queries_path else [])
        if len({p.resolve() for p in outputs + [self.out]}) != len(outputs) + 1:
            raise MakeBagError("--out, --gt-out and --queries-out must be different paths")


@dataclass
class MakeBagSummary:
    """What a conversion wrote and skipped (the CLI prints it as one paragraph)."""

    bag: Path
    ground_truth: Path
    queries_file: Path | None
    storage: str
    topic: str
    encoding: str
    images_written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file name, reason) of each image left out."""
    annotations: int = 0
    annotations_dropped: int = 0
    """Crowd regions and empty boxes of written images, which the evaluation cannot score."""
    queries: int = 0
    negatives: int = 0
    refs_outside_dataset: int = 0
    """Refs naming annotations the dataset does not have (another part of a split): dropped."""
    bag_bytes: int = 0
    seconds: float = 0.0

    @property
    def frames_per_s(self) -> float:
        """Images written per second of the whole conversion (reading, encoding and writing)."""
        return self.images_written / self.seconds if self.seconds > 0 else 0.0

    def paragraph(self) -> str:
        """One paragraph saying what was written where, what was skipped, and how fast."""
        skipped = f"skipped {len(self.skipped)} missing or unreadable" if self.skipped else "skipped none"
        dropped = f" ({self.annotations_dropped} crowd/empty left out)" if self.annotations_dropped else ""
        negatives = " (up to --negatives an image: fewer where fewer categories are absent)" if self.negatives else ""
        queries = (
            f"{self.queries} referring and {self.negatives} negative queries{negatives} to {self.queries_file}"
            if self.queries_file
            else "no queries"
        )
        if self.refs_outside_dataset:
            queries += f" ({self.refs_outside_dataset} refs of annotations not in this dataset dropped)"
        return (
            f"make-bag: wrote {self.images_written} images ({self.encoding}) on {self.topic} to {self.bag} "
            f"({self.storage}, {_megabytes(self.bag_bytes)}), {skipped}; ground truth {self.ground_truth} with "
            f"{self.annotations} annotations{dropped}; {queries}; {self.seconds:.1f} s, "
            f"{self.frames_per_s:.1f} frames/s."
        )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


# --- the dataset ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    """The instances JSON, indexed: image entries in file order, annotations by image, category names."""

    data: Mapping[str, Any]
    images: tuple[Mapping[str, Any], ...]
    annotations: Mapping[int, tuple[Mapping[str, Any], ...]]
    categories: Mapping[int, str]
    annotation_image: Mapping[int, int]
    source: str

    def present_names(self, image_id: int) -> set[str]:
        """Normalised names of the categories annotated in an image, crowd regions included."""
        return {normalise_label(self.categories[int(a["category_id"])]) for a in self.annotations.get(image_id, ())}


def load_dataset(path: Path) -> Dataset:
    """Read a COCO instances JSON and check what the conversion relies on; MakeBagError names the entry."""
    data = _read_json(path, "annotations")
    if not isinstance(data, Mapping):
        raise MakeBagError(f"annotations {path}: expected a COCO JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise MakeBagError(f"annotations {path}: missing or non-list '{key}' (COCO format)")
    categories = _categories(data["categories"], path)
    images = tuple(data["images"])
    seen: set[int] = set()
    for entry in images:
        if not isinstance(entry, Mapping) or not _is_int(entry.get("id")) or not str(entry.get("file_name", "")):
            raise MakeBagError(
                f"annotations {path}: image entry {_short(entry)} needs an integer 'id' and a 'file_name'"
            )
        if entry["id"] in seen:
            raise MakeBagError(f"annotations {path}: duplicate image id {entry['id']}")
        seen.add(entry["id"])
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    annotation_image: dict[int, int] = {}
    for entry in data["annotations"]:
        if not isinstance(entry, Mapping) or not all(_is_int(entry.get(k)) for k in ("id", "image_id", "category_id")):
            raise MakeBagError(
                f"annotations {path}: annotation {_short(entry)} needs integer 'id', 'image_id' and 'category_id'"
            )
        if entry["category_id"] not in categories:
            raise MakeBagError(
                f"annotations {path}: annotation {entry['id']} has unknown category {entry['category_id']}"
            )
        if entry["id"] in annotation_image:
            raise MakeBagError(f"annotations {path}: duplicate annotation id {entry['id']}")
        annotation_image[entry["id"]] = entry["image_id"]
        by_image.setdefault(entry["image_id"], []).append(entry)
    annotations = {image_id: tuple(entries) for image_id, entries in by_image.items()}
    return Dataset(data, images, annotations, categories, annotation_image, str(path))


def _categories(entries: list[Any], path: Path) -> dict[int, str]:
    categories: dict[int, str] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or not _is_int(entry.get("id")) or not str(entry.get("name", "")).strip():
            raise MakeBagError(f"annotations {path}: category {_short(entry)} needs an integer 'id' and a 'name'")
        categories[entry["id"]] = str(entry["name"]).strip()
    return categories


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(entry: Any) -> str:
    text = repr(entry)
    return text if len(text) <= 120 else text[:117] + "..."


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise MakeBagError(f"{what} file {path} does not exist")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MakeBagError(f"{what} file {path} is not valid JSON: {error}") from None


def scorable(annotation: Mapping[str, Any]) -> bool:
    """Whether the evaluation can score an annotation: not a crowd region, a finite box of positive size."""
    if annotation.get("iscrowd", 0):
        return False
    try:
        x, y, w, h = (float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError):
        return False
    return all(math.isfinite(v) for v in (x, y, w, h)) and w > 0 and h > 0


# --- referring expressions ------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """One referring expression of the refs file: its query id, its image and target annotation."""

    id: str
    image_id: int
    annotation_id: int
    phrase: str


@dataclass(frozen=True)
class LoadedRefs:
    """A refs file read against one dataset: its refs by image id, and how many name no annotation of it."""

    by_image: Mapping[int, list[Ref]]
    outside_dataset: int = 0
    """Entries naming an annotation the dataset does not have: the other parts of a split (dropped)."""


def load_refs(path: Path, dataset: Dataset) -> LoadedRefs:
    """RefCOCO-style refs (a list, or ``{"refs": [...]}``), one :class:`Ref` per sentence, by image id.

    Each entry: ``ann_id`` (or ``annotation_id``), optional ``image_id`` (checked against the annotation's),
    and ``sentences`` (``[{"sent": ...}]`` or strings) or ``phrase``. Query ids are
    ``ref-<ref_id>-<k>`` (``ref-<position>-<k>`` without a ``ref_id``, from 0), k counting the entry's
    sentences. An entry whose annotation is not in the dataset is dropped and counted, so one refs file
    serves every part of a split; when no entry names one of the dataset's annotations, the refs are of
    another dataset and that is an error.
    """
    data = _read_json(path, "refs")
    entries = data.get("refs") if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
        raise MakeBagError(f"refs {path}: expected a list of refs or {{'refs': [...]}}")
    by_image: dict[int, list[Ref]] = {}
    seen: set[str] = set()
    outside: list[Any] = []
    for position, entry in enumerate(entries):
        key = entry.get("ref_id", position) if isinstance(entry, Mapping) else position
        refs = _entry_refs(entry, f"ref-{key}", dataset, path)
        if refs is None:
            outside.append(entry)
            continue
        if refs and refs[0].id in seen:
            raise MakeBagError(f"refs {path}: duplicate ref_id {key!r}")
        seen.update(ref.id for ref in refs)
        for ref in refs:
            by_image.setdefault(ref.image_id, []).append(ref)
    if outside and len(outside) == len(entries):
        raise MakeBagError(
            f"refs {path}: none of its {len(entries)} entries names an annotation of the dataset "
            f"(the first names annotation {_annotation_id(outside[0])}): refs of another dataset?"
        )
    return LoadedRefs(by_image, len(outside))


def _annotation_id(entry: Mapping[str, Any]) -> Any:
    return entry.get("ann_id", entry.get("annotation_id"))


def _entry_refs(entry: Any, prefix: str, dataset: Dataset, path: Path) -> list[Ref] | None:
    """The entry's refs; None when its annotation is not in the dataset."""
    if not isinstance(entry, Mapping):
        raise MakeBagError(f"refs {path}: entry {_short(entry)} is not an object")
    annotation_id = _annotation_id(entry)
    if not _is_int(annotation_id):
        raise MakeBagError(f"refs {path}: entry {_short(entry)} needs an integer 'ann_id' (or 'annotation_id')")
    if annotation_id not in dataset.annotation_image:
        return None
    image_id = dataset.annotation_image[annotation_id]
    if "image_id" in entry and entry["image_id"] != image_id:
        raise MakeBagError(
            f"refs {path}: entry {_short(entry)} says image {entry['image_id']}, but annotation {annotation_id} "
            f"is on image {image_id}"
        )
    phrases = [" ".join(p.split()) for p in _phrases(entry, path)]
    return [Ref(f"{prefix}-{k}", image_id, annotation_id, p) for k, p in enumerate(phrases) if p]


def _phrases(entry: Mapping[str, Any], path: Path) -> list[str]:
    if "sentences" in entry:
        sentences = entry["sentences"]
        if isinstance(sentences, list):
            texts = [s.get("sent", s.get("raw")) if isinstance(s, Mapping) else s for s in sentences]
            if all(isinstance(t, str) for t in texts):
                return texts
    elif isinstance(entry.get("phrase"), str):
        return [entry["phrase"]]
    raise MakeBagError(f"refs {path}: entry {_short(entry)} needs 'sentences' [{{'sent': ...}}] or a 'phrase'")


# --- negatives ------------------------------------------------------------------------------------
def negative_names(dataset: Dataset, image_id: int, count: int, seed: int) -> list[str]:
    """Up to ``count`` category names with no annotation (crowd included) in the image, sampled reproducibly.

    The generator is seeded by ``seed`` and the image id alone, so an image gets the same negatives whatever
    the order, limit or shuffle of the run.
    """
    if count <= 0:
        return []
    present = dataset.present_names(image_id)
    absent: dict[str, str] = {}
    for category_id in sorted(dataset.categories):
        name = dataset.categories[category_id]
        if normalise_label(name) not in present:
            absent.setdefault(normalise_label(name), name)
    candidates = list(absent.values())
    return random.Random(f"{seed}:{image_id}").sample(candidates, min(count, len(candidates)))


# --- images ---------------------------------------------------------------------------------------
class UnreadableImage(Exception):
    """An image file that is missing, undecodable or of another size than its annotation says."""


def read_rgb(path: Path) -> np.ndarray:
    """The image file as (H, W, 3) uint8 RGB: grey replicated, alpha dropped, 16-bit scaled by ``>> 8``.

    Pixels as stored (EXIF orientation is not applied: COCO boxes refer to the stored pixels).
    """
    import cv2

    if not path.is_file():
        raise UnreadableImage("missing")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one warning line says it, not OpenCV's
    try:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        raise UnreadableImage("unreadable (not an image OpenCV can decode)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    channels = 1 if image.ndim == 2 else int(image.shape[2])
    layout = {1: "mono", 3: "bgr", 4: "bgra"}.get(channels)
    bits = {np.dtype(np.uint8): "8", np.dtype(np.uint16): "16"}.get(image.dtype)
    if layout is None or bits is None:
        raise UnreadableImage(f"unsupported pixel layout {image.dtype} {image.shape}")
    if bits == "8":  # OpenCV's conversion: several times faster than numpy's copy of a reversed view
        conversion = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}[channels]
        return np.ascontiguousarray(cv2.cvtColor(image, conversion))
    try:
        return np.ascontiguousarray(to_rgb(image, layout + bits))
    except ImageFormatError as error:
        raise UnreadableImage(str(error)) from None


def _checked_size(entry: Mapping[str, Any], rgb: np.ndarray) -> tuple[int, int]:
    """(width, height) for the ground truth: the dataset's, which must match the pixels, or the image's."""
    height, width = rgb.shape[:2]
    declared = (entry.get("width"), entry.get("height"))
    if declared != (None, None) and declared != (width, height):
        raise UnreadableImage(f"is {width}x{height}, the annotations say {declared[0]}x{declared[1]}")
    return width, height


# --- the conversion -------------------------------------------------------------------------------
def image_order(dataset: Dataset, shuffle: bool, seed: int) -> list[Mapping[str, Any]]:
    """The dataset's images in the order they are tried: file order, or shuffled reproducibly by ``seed``."""
    order = list(dataset.images)
    if shuffle:
        random.Random(seed).shuffle(order)
    return order


def start_stamp_ns(order: Sequence[Mapping[str, Any]]) -> int:
    """The first image's stamp: :data:`START_STAMP_NS` plus whole seconds derived from the image order.

    Reproducible (the same dataset, shuffle and seed give the same bag), yet two different datasets, or two
    parts of one split, get stamps far apart: scoring a bag against another bag's ground truth then matches
    no frame and says so, instead of scoring the wrong labels against the images at equal stamps.
    """
    digest = hashlib.sha256("\n".join(f"{image['id']}\t{image['file_name']}" for image in order).encode())
    offset_s = int.from_bytes(digest.digest()[:8], "big") % START_OFFSET_RANGE_S
    return START_STAMP_NS + offset_s * 1_000_000_000


def stamp_ns(index: int, rate_hz: float, start_ns: int = START_STAMP_NS) -> int:
    """Stamp of the ``index``-th image written: ``start_ns + index / rate`` (rounded to the ns)."""
    return start_ns + round(index * 1e9 / rate_hz)


def make_bag(
    options: MakeBagOptions,
    warn: Callable[[str], None] | None = None,
    read_image: Callable[[Path], np.ndarray] = read_rgb,
) -> MakeBagSummary:
    """Convert the dataset as ``options`` say and return what was done.

    ``warn`` gets one line per skipped image (default: stderr, through the progress bar); ``read_image`` reads
    one file (a stand-in can prove the streaming). Raises MakeBagError (a ValueError) for bad input, with
    nothing left behind; on any failure or interruption the partial bag is removed.
    """
    options.check()
    _check_outputs(options)
    dataset = load_dataset(options.annotations)
    refs = load_refs(options.refs, dataset) if options.refs else LoadedRefs({})
    summary = MakeBagSummary(
        options.out, options.gt_path, options.queries_path, options.storage, options.topic, options.encoding
    )
    summary.refs_outside_dataset = refs.outside_dataset
    order = image_order(dataset, options.shuffle, options.seed)
    if options.strict:  # before an existing bag is replaced (--force): a refused conversion loses nothing
        _check_files_exist(order[: options.limit or len(order)], options.images)
    started = time.perf_counter()
    _remove_bag(options.out)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        gt_images, gt_annotations, queries = _write_bag(
            options, dataset, order, refs.by_image, summary, warn, read_image
        )
        if not summary.images_written:
            raise MakeBagError(
                f"none of the {len(dataset.images)} images of {options.annotations} could be read from "
                f"{options.images}; nothing written"
            )
        ground_truth = {key: value for key, value in dataset.data.items() if key not in ("images", "annotations")}
        _write_json(options.gt_path, {**ground_truth, "images": gt_images, "annotations": gt_annotations})
        if options.queries_path:
            _write_json(options.queries_path, {"queries": queries})
    except BaseException:
        # Never leave a half-written bag that looks valid, nor a ground truth without its bag.
        shutil.rmtree(options.out, ignore_errors=True)
        for path in (options.gt_path, options.queries_path):
            if path is not None:
                path.unlink(missing_ok=True)
        raise
    summary.bag_bytes = sum(p.stat().st_size for p in options.out.rglob("*") if p.is_file())
    summary.seconds = time.perf_counter() - started
    return summary


def _write_bag(
    options: MakeBagOptions,
    dataset: Dataset,
    order: Sequence[Mapping[str, Any]],
    refs: Mapping[int, Sequence[Ref]],
    summary: MakeBagSummary,
    warn: Callable[[str], None] | None,
    read_image: Callable[[Path], np.ndarray],
) -> tuple[list[dict[str, Any]], list[Mapping[str, Any]], list[dict[str, Any]]]:
    """Stream the images of ``order`` into the bag; returns the ground-truth images, annotations and queries."""
    gt_images: list[dict[str, Any]] = []
    gt_annotations: list[Mapping[str, Any]] = []
    queries: list[dict[str, Any]] = []
    start_ns = start_stamp_ns(order)
    wanted = min(options.limit or len(order), len(order))
    bar = _progress(wanted, options.progress)
    warn = warn or (lambda line: bar.write(line, file=sys.stderr))
    try:
        with BagWriter(options.out, options.storage) as writer:
            for entry, rgb, size in _readable(order, options, summary, warn, read_image):
                stamp = stamp_ns(summary.images_written, options.rate_hz, start_ns)
                writer.write_image(
                    options.topic,
                    rgb,
                    stamp,
                    options.frame_id,
                    encoding=options.encoding,
                    jpeg_quality=options.jpeg_quality,
                )
                del rgb  # only the image being written is ever held
                width, height = size
                gt_images.append(
                    {**entry, "width": width, "height": height, "stamp_ns": stamp, "frame_id": options.frame_id}
                )
                _add_annotations(dataset, entry["id"], gt_annotations, summary)
                queries.extend(_queries(dataset, refs, entry["id"], options, summary))
                summary.images_written += 1
                bar.update(1)
                if summary.images_written == wanted:
                    break
                bar.total = min(wanted, len(order) - len(summary.skipped))  # skipped images are not coming
        bar.total = summary.images_written
        bar.refresh()
    finally:
        bar.close()
    return gt_images, gt_annotations, queries


def _check_files_exist(entries: Sequence[Mapping[str, Any]], images: Path) -> None:
    """``--strict``: a missing file is found by one stat per image before anything is written, not at its turn."""
    for entry in entries:
        path = images / str(entry["file_name"])
        if not path.is_file():
            raise MakeBagError(f"image {entry['id']} ({path}) missing; {STRICT_STOPS} (checked before writing)")


def _readable(
    order: Sequence[Mapping[str, Any]],
    options: MakeBagOptions,
    summary: MakeBagSummary,
    warn: Callable[[str], None],
    read_image: Callable[[Path], np.ndarray],
) -> Iterator[tuple[Mapping[str, Any], np.ndarray, tuple[int, int]]]:
    """(entry, RGB, (width, height)) of each readable image, read only when the writer asks for it."""
    for entry in order:
        path = options.images / str(entry["file_name"])
        try:
            rgb = read_image(path)
            size = _checked_size(entry, rgb)
        except UnreadableImage as error:
            message = f"image {entry['id']} ({path}) {error}"
            if options.strict:
                raise MakeBagError(f"{message}; {STRICT_STOPS}") from None
            summary.skipped.append((str(entry["file_name"]), str(error)))
            warn(f"chatrex-ros make-bag: warning: skipping {message}")
            continue
        yield entry, rgb, size
        del rgb  # not held while the next one is read


def _add_annotations(dataset: Dataset, image_id: int, out: list[Mapping[str, Any]], summary: MakeBagSummary) -> None:
    for annotation in dataset.annotations.get(image_id, ()):
        if scorable(annotation):
            out.append(annotation)
            summary.annotations += 1
        else:
            summary.annotations_dropped += 1


def _queries(
    dataset: Dataset, refs: Mapping[int, Sequence[Ref]], image_id: int, options: MakeBagOptions, summary: MakeBagSummary
) -> list[dict[str, Any]]:
    """The image's referring queries (those whose target is kept), then its negatives."""
    queries: list[dict[str, Any]] = []
    for ref in refs.get(image_id, ()):
        annotation = next(a for a in dataset.annotations[image_id] if a["id"] == ref.annotation_id)
        if scorable(annotation):
            queries.append(
                {"id": ref.id, "image_id": image_id, "phrase": ref.phrase, "annotation_id": ref.annotation_id}
            )
    summary.queries += len(queries)
    for k, name in enumerate(negative_names(dataset, image_id, options.negatives, options.seed)):
        queries.append({"id": f"neg-{image_id}-{k}", "image_id": image_id, "phrase": name, "negative": True})
        summary.negatives += 1
    return queries


# --- outputs --------------------------------------------------------------------------------------
def _check_outputs(options: MakeBagOptions) -> None:
    """Refuse existing outputs without ``overwrite``, and with it a directory that is no bag."""
    existing = [p for p in (options.out, options.gt_path, options.queries_path) if p is not None and p.exists()]
    if existing and not options.overwrite:
        raise MakeBagError(f"{existing[0]} already exists; pass --force to replace it")
    if options.out.is_dir() and any(not _is_bag_file(p) for p in options.out.iterdir()):
        raise MakeBagError(f"{options.out} exists and is not a rosbag2 directory; --force only replaces bags")
    if options.out.exists() and not options.out.is_dir():
        raise MakeBagError(f"{options.out} exists and is not a directory; choose another --out")


def _is_bag_file(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(suffix) for suffix in _BAG_FILES)


def _remove_bag(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Written beside and renamed into place: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _progress(total: int, enabled: bool) -> Any:
    """Tqdm on stderr when asked for and stderr is a terminal; otherwise a stand-in that only writes lines."""
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc="make-bag", unit="image", file=sys.stderr)
        except ImportError:
            pass
    return _Lines()


class _Lines:
    """The progress bar's interface without a bar."""

    total = 0

    def update(self, n: int) -> None:
        pass

    def write(self, line: str, file: Any = None) -> None:
        print(line, file=file or sys.stderr)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass
