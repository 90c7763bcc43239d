"""Many bags: which bags a ``--bag`` list names, in which order, and which ground truth belongs to each.

The order is fixed (the arguments in the order given; a directory's bags sorted by name) because the
pooled metrics are computed over the bags in this order: a serial run and a parallel one must see the
same sequence whatever finishes first.

Ground truth per bag (first rule that applies):

* ``--gt GT.json`` (and ``--queries Q.json``): one bag only, these files;
* ``--gt-topic TOPIC``: each bag's own ``Answer`` topic TOPIC;
* otherwise ``<bag>_annotations.json`` beside the bag, as ``chatrex-ros make-sample`` writes it
  (``<dir>_annotations.json`` for a bag directory, ``<name>_annotations.json`` for ``<name>.mcap``).

Referring queries: ``--queries`` for a single bag; otherwise, unless ``--gt`` was given,
``<bag>_queries.json`` beside the bag when it exists (none when it does not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chatrex_ros.eval.bagio import BagError, BagReader
from chatrex_ros.eval.groundtruth import GroundTruth, ReferringQuery, load_queries

BAG_SUFFIXES = (".mcap", ".db3")
ANNOTATIONS_SUFFIX = "_annotations.json"
QUERIES_SUFFIX = "_queries.json"
METADATA = "metadata.yaml"


def _looks_like_bag_dir(path: Path) -> bool:
    """A rosbag2 directory: metadata.yaml, or (metadata lost: still reported, never skipped) data files."""
    return (path / METADATA).is_file() or any(p.suffix in BAG_SUFFIXES for p in path.iterdir() if p.is_file())


def is_bag_folder(path: Path) -> bool:
    """A directory that is not itself a rosbag2 (no metadata.yaml) but holds bags."""
    return path.is_dir() and not (path / METADATA).is_file() and bool(_bags_in(path))


def _bags_in(folder: Path) -> list[Path]:
    children = sorted(folder.iterdir(), key=lambda p: p.name)
    return [
        child
        for child in children
        if (child.is_dir() and _looks_like_bag_dir(child)) or (child.is_file() and child.suffix in BAG_SUFFIXES)
    ]


def discover_bags(paths: Sequence[str | Path]) -> list[Path]:
    """The bags named by ``paths``, in order; a bag named twice counts once.

    A bag (directory or .mcap/.db3 file) is itself; a folder of bags stands for its sub-directories that
    are bags and its .mcap/.db3 files, by name.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise BagError(f"bag {path} does not exist")
        if path.is_dir() and not (path / METADATA).is_file():
            inside = _bags_in(path)
            if not inside:
                raise BagError(
                    f"{path} is neither a rosbag2 (no {METADATA}) nor a directory of bags (no sub-directory "
                    f"that is a bag, no {'/'.join(BAG_SUFFIXES)} file)"
                )
            found.extend(inside)
        else:
            found.append(path)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def sidecar(bag: Path, suffix: str) -> Path:
    """``<bag><suffix>`` beside the bag.

    ``sample_bag`` -> ``sample_bag_annotations.json``, ``run.mcap`` -> ``run_annotations.json``.
    """
    base = bag if bag.is_dir() else bag.with_suffix("")
    return base.parent / f"{base.name}{suffix}"


@dataclass(frozen=True)
class BagJob:
    """One bag to evaluate, with where its ground truth comes from: picklable, for worker processes."""

    index: int  # position in the fixed bag order
    label: str  # unique short name: the bag's name (a suffix -2, -3, ... when two bags share one)
    bag: str
    gt: str | None = None  # COCO file
    gt_topic: str | None = None  # or an Answer topic of the bag
    queries: str | None = None
    image_topic: str | None = None
    stamp_tolerance_ns: int = 0
    max_frames: int | None = None
    count_queries: bool = False

    def load_inputs(self) -> tuple[GroundTruth, tuple[ReferringQuery, ...]]:
        """The bag's ground truth and referring queries (ValueError/BagError when they cannot be read)."""
        if self.gt is not None:
            gt = GroundTruth.load(self.gt)
        elif self.gt_topic is not None:
            with BagReader(self.bag) as reader:
                gt = reader.ground_truth(self.gt_topic, None)
        else:
            raise ValueError(f"bag {self.bag}: no ground truth given")
        queries = load_queries(self.queries, gt) if self.queries else ()
        return gt, queries


def plan_jobs(
    bags: Sequence[Path],
    gt: Path | None = None,
    gt_topic: str | None = None,
    queries: Path | None = None,
    image_topic: str | None = None,
    stamp_tolerance_ns: int = 0,
    max_frames: int | None = None,
    count_queries: bool = False,
) -> list[BagJob]:
    """One job per bag with its ground truth by the module's rules; ValueError naming every bag without one."""
    if not bags:
        raise ValueError("no bag to evaluate")
    if gt is not None and gt_topic is not None:
        raise ValueError("give at most one of --gt GT.json or --gt-topic TOPIC")
    if len(bags) > 1 and gt is not None:
        raise ValueError(
            f"--gt names one ground truth but {len(bags)} bags were given: put <bag>{ANNOTATIONS_SUFFIX} beside "
            "each bag (as make-sample does), or use --gt-topic"
        )
    if len(bags) > 1 and queries is not None:
        raise ValueError(f"--queries is for one bag; with several, put <bag>{QUERIES_SUFFIX} beside each bag")
    missing = [str(sidecar(bag, ANNOTATIONS_SUFFIX)) for bag in bags if gt is None and gt_topic is None]
    missing = [path for path in missing if not Path(path).is_file()]
    if missing:
        raise ValueError(
            f"no ground truth for {len(missing)} bag(s): expected {', '.join(missing)} "
            "(or give --gt GT.json for a single bag, or --gt-topic TOPIC)"
        )
    jobs = []
    for index, (bag, label) in enumerate(zip(bags, _labels(bags), strict=True)):
        beside = sidecar(bag, QUERIES_SUFFIX)
        bag_queries = queries if queries is not None else (beside if gt is None and beside.is_file() else None)
        jobs.append(
            BagJob(
                index,
                label,
                str(bag),
                str(gt if gt is not None else sidecar(bag, ANNOTATIONS_SUFFIX)) if gt_topic is None else None,
                gt_topic,
                str(bag_queries) if bag_queries is not None else None,
                image_topic,
                stamp_tolerance_ns,
                max_frames,
                count_queries,
            )
        )
    return jobs


def _labels(bags: Sequence[Path]) -> list[str]:
    """Unique, file-name-safe names: the bag's name (without .mcap/.db3), numbered when repeated."""
    labels: list[str] = []
    for bag in bags:
        name = bag.name if bag.is_dir() else bag.stem
        label, n = name, 1
        while label in labels:
            n += 1
            label = f"{name}-{n}"
        labels.append(label)
    return labels
