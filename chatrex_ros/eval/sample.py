"""The sample bag: real photographs shipped inside scikit-image, annotated by hand in this package.

``chatrex_ros/data/sample_annotations.json`` (COCO + ``stamp_ns``, see :mod:`chatrex_ros.eval.groundtruth`)
names each photograph by its file in ``skimage.data.data_dir`` and gives the stamp it is published at
(10 Hz from a fixed epoch), so its stamps match the ground truth by construction and the bag is the same
on every run (pixel-identical wherever the same image decoders are installed). ``sample_queries.json``
holds referring expressions for the same images.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from chatrex_ros.eval.bagio import STORAGES, BagError, BagReader, BagWriter
from chatrex_ros.eval.bags import ANNOTATIONS_SUFFIX, QUERIES_SUFFIX, sidecar
from chatrex_ros.eval.groundtruth import GroundTruth, GroundTruthImage
from chatrex_ros.eval.records import ground_truth_record
from chatrex_ros.names import GROUND_TRUTH_TOPIC

SAMPLE_IMAGE_TOPIC = "/camera/image_raw"
SAMPLE_FRAME_ID = "camera_color_optical_frame"


def data_file(name: str) -> Path:
    """Path of a package data file (``chatrex_ros/data/<name>``)."""
    path = Path(str(resources.files("chatrex_ros").joinpath("data", name)))
    if not path.is_file():
        raise FileNotFoundError(
            f"package data file chatrex_ros/data/{name} is missing; is the package installed with its data?"
        )
    return path


def sample_annotations_path() -> Path:
    """The sample bag's ground truth (COCO with ``stamp_ns``)."""
    return data_file("sample_annotations.json")


def sample_queries_path() -> Path:
    """The sample bag's referring queries."""
    return data_file("sample_queries.json")


def load_sample_image(image: GroundTruthImage) -> np.ndarray:
    """The photograph as (H, W, 3) uint8 RGB (grey ones replicated), checked against the annotation size."""
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError("the sample images ship with scikit-image: pip install scikit-image") from error
    import cv2

    path = Path(skimage.data.data_dir) / image.file_name
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"scikit-image data file {path} is missing or unreadable")
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    if rgb.shape[:2] != (image.height, image.width):
        raise ValueError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]}, the annotations say {image.width}x{image.height}")
    return rgb


def make_sample_bag(
    out: str | Path,
    storage: str = "mcap",
    with_ground_truth_topic: bool = False,
    overwrite: bool = False,
    gt: GroundTruth | None = None,
) -> Path:
    """Write the sample bag (rgb8 images on /camera/image_raw) and return its path.

    ``with_ground_truth_topic`` adds the annotations as Answer messages on ``GROUND_TRUTH_TOPIC``.
    """
    if storage not in STORAGES:
        raise ValueError(f"unknown bag storage {storage!r}; choose one of {', '.join(STORAGES)}")
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise BagError(f"{out} already exists; pass --force (Python: overwrite=True) to replace it")
        shutil.rmtree(out)
    gt = gt or GroundTruth.load(sample_annotations_path())
    images = [(image, load_sample_image(image)) for image in gt.images]  # fail before creating the bag
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with BagWriter(out, storage) as writer:
            for image, rgb in images:
                writer.write_image(SAMPLE_IMAGE_TOPIC, rgb, image.stamp_ns, SAMPLE_FRAME_ID)
                if with_ground_truth_topic:
                    writer.write_answer(GROUND_TRUTH_TOPIC, ground_truth_record(gt, image.id), SAMPLE_FRAME_ID)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # never leave a half-written bag that looks valid
        raise
    return out


def write_sample_sidecars(bag: str | Path) -> tuple[Path, Path]:
    """Copies of the sample's annotations and queries beside ``bag``, where ``eval --bag`` looks for them.

    Returns their paths. Copies, so that the next commands can name them relative to where the user is.
    """
    annotations, queries = sidecar(Path(bag), ANNOTATIONS_SUFFIX), sidecar(Path(bag), QUERIES_SUFFIX)
    shutil.copyfile(sample_annotations_path(), annotations)
    shutil.copyfile(sample_queries_path(), queries)
    return annotations, queries


def ensure_sample_bag(out: str | Path, storage: str = "mcap") -> Path:
    """The sample bag at ``out``, written if missing or unreadable (the demo's cache)."""
    out = Path(out)
    if out.exists():
        try:
            with BagReader(out) as reader:
                gt = GroundTruth.load(sample_annotations_path())
                if reader.image_stamps(SAMPLE_IMAGE_TOPIC) == [image.stamp_ns for image in gt.images]:
                    return out
        except (BagError, OSError):
            pass
    return make_sample_bag(out, storage, overwrite=True)
