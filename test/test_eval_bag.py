"""Bag reading/writing with rosbags (both storages), the sample bag, ground truth files and topics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from chatrex_ros.core.types import Detection
from chatrex_ros.eval.bagio import (
    GROUND_TRUTH_TOPIC,
    STORAGES,
    BagError,
    BagReader,
    BagWriter,
    header_stamp_ns,
)
from chatrex_ros.eval.groundtruth import GroundTruth, load_queries, match_stamps
from chatrex_ros.eval.records import AnswerRecord, ProposalRecord
from chatrex_ros.eval.sample import (
    SAMPLE_FRAME_ID,
    SAMPLE_IMAGE_TOPIC,
    ensure_sample_bag,
    load_sample_image,
    make_sample_bag,
    sample_annotations_path,
    sample_queries_path,
)

T0 = 1_700_000_000_123_456_789
TOPIC = "/camera/color/image_raw"


def images(count=3, height=48, width=64):
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def answer(stamp_ns: int) -> AnswerRecord:
    return AnswerRecord(
        stamp_ns,
        "eval-detect/1",
        "detect",
        status=0,
        num_proposals=9,
        question="Please detect cup in this image.",
        raw_output="<ground>cup</ground><objects><obj3><obj8></objects>",
        text="cup",
        detections=(
            Detection(3, "cup", (1.5, 2.0, 30.25, 40.0), 0.75),
            Detection(8, "cup", (5.0, 6.0, 7.0, 8.0), 0.5),
        ),
        model_ms=12.5,
        total_ms=20.0,
        received_ns=stamp_ns + 30_000_000,
    )


@pytest.mark.parametrize("storage", STORAGES)
def test_round_trip_images_stamps_answers_and_proposals(tmp_path, storage):
    frames = images()
    stamps = [T0 + i * 33_333_333 for i in range(len(frames))]
    proposals = ProposalRecord(
        stamps[0],
        np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32),
        np.array([0.9, 0.4], np.float32),
        "selective_search",
        3.5,
        stamps[0] + 10_000_000,
        64,
        48,
    )
    with BagWriter(tmp_path / "bag", storage) as writer:
        for rgb, stamp in zip(frames, stamps, strict=True):
            writer.write_image(TOPIC, rgb, stamp, "cam_optical", log_time_ns=stamp + 1_000)
        writer.write_proposals("/chatrex/proposals", proposals, "cam_optical")
        writer.write_answer("/chatrex/answer", answer(stamps[1]), "cam_optical")

    with BagReader(tmp_path / "bag") as reader:
        assert reader.storage == storage
        assert reader.topics[TOPIC].count == 3
        assert reader.image_topic() == TOPIC
        assert reader.image_stamps(TOPIC) == stamps
        read = list(reader.image_frames(TOPIC))
        assert [f.stamp_ns for f in read] == stamps
        assert [f.log_time_ns for f in read] == [s + 1_000 for s in stamps]
        assert {f.frame_id for f in read} == {"cam_optical"}
        for frame, rgb in zip(read, frames, strict=True):
            np.testing.assert_array_equal(frame.rgb(), rgb)
        only_second = list(reader.image_frames(TOPIC, {stamps[1]}))
        assert [f.stamp_ns for f in only_second] == [stamps[1]]
        [got] = reader.proposals("/chatrex/proposals")
        np.testing.assert_array_equal(got.boxes, proposals.boxes)
        np.testing.assert_array_equal(got.scores, proposals.scores)
        assert (got.stamp_ns, got.received_ns, got.backend, got.width, got.height) == (
            stamps[0],
            stamps[0] + 10_000_000,
            "selective_search",
            64,
            48,
        )
        [back] = reader.answers("/chatrex/answer")
        assert back == answer(stamps[1])  # every field, the receive time included


def test_reader_uses_the_bags_own_definitions_without_our_msg_files(tmp_path):
    with BagWriter(tmp_path / "bag") as writer:
        writer.write_answer("/chatrex/answer", answer(T0), "cam")
    bare = get_typestore(Stores.LATEST)  # no chatrex_ros types registered
    assert "chatrex_ros/msg/Answer" not in bare.types
    with BagReader(tmp_path / "bag", typestore=bare) as reader:
        assert reader.answers("/chatrex/answer") == [answer(T0)]


def test_header_stamp_peek_agrees_with_deserialisation(tmp_path):
    with BagWriter(tmp_path / "bag") as writer:
        writer.write_image(TOPIC, images(1)[0], T0, "cam")
    with BagReader(tmp_path / "bag") as reader:
        [(_, raw)] = list(reader.raw(TOPIC))
        assert header_stamp_ns(raw) == T0
        assert header_stamp_ns(bytes([0, 0, 0, 0]) + (5).to_bytes(4, "big") + (7).to_bytes(4, "big")) == 5_000_000_007


def test_image_topic_detection_and_missing_topic_errors(tmp_path):
    with BagWriter(tmp_path / "bag") as writer:
        writer.write_image("/cam/depth/image", images(1)[0], T0, "cam")
        writer.write_image("/cam/color/image", images(1)[0], T0, "cam")
        writer.write_image("/cam/ir/image", images(1)[0], T0, "cam")
    with BagReader(tmp_path / "bag") as reader:
        with pytest.raises(BagError, match="several image topics.*--image-topic"):
            reader.image_topic()
        assert reader.image_topic("/cam/ir/image") == "/cam/ir/image"
        with pytest.raises(BagError, match=r"no topic '/nope'.*/cam/color/image \(sensor_msgs/msg/Image\)"):
            reader.image_topic("/nope")
        with pytest.raises(BagError, match="expected chatrex_ros/msg/Answer"):
            reader.answers("/cam/color/image")


def test_bag_without_images_says_so(tmp_path):
    with BagWriter(tmp_path / "bag") as writer:
        writer.write_answer("/chatrex/answer", answer(T0), "cam")
    with BagReader(tmp_path / "bag") as reader, pytest.raises(BagError, match="no image topic"):
        reader.image_topic()


@pytest.mark.parametrize("storage", STORAGES)
def test_corrupt_bags_give_clear_errors(tmp_path, storage):
    bag = tmp_path / "bag"
    with BagWriter(bag, storage) as writer:
        for i, rgb in enumerate(images(4, 240, 320)):
            writer.write_image(TOPIC, rgb, T0 + i, "cam")
    data = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])  # truncated recording
    with pytest.raises(BagError, match=str(bag)), BagReader(bag) as reader:
        list(reader.image_frames(TOPIC))

    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, mapping")
    with pytest.raises(BagError, match="cannot open bag"):
        BagReader(bag)
    with pytest.raises(BagError, match="does not exist"):
        BagReader(tmp_path / "missing")
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"this is not an mcap file" * 10)
    with pytest.raises(BagError, match="garbage.mcap"), BagReader(garbage) as reader:
        reader.image_topic()


def test_writer_refuses_to_overwrite_and_unknown_storage(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(BagError, match="already exists"):
        BagWriter(tmp_path / "exists")
    with pytest.raises(BagError, match="unknown bag storage 'rosbag1'"):
        BagWriter(tmp_path / "new", "rosbag1")
    with BagWriter(tmp_path / "bag") as writer, pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        writer.write_image(TOPIC, np.zeros((4, 4), np.uint8), T0, "cam")


# --- sample data ----------------------------------------------------------------------------------
def test_sample_annotations_are_consistent_with_the_photographs():
    gt = GroundTruth.load(sample_annotations_path())
    assert len(gt) >= 6 and len(gt.categories) >= 10
    stamps = gt.stamps_ns
    assert np.all(np.diff(stamps) == 100_000_000)  # 10 Hz
    for image in gt.images:
        rgb = load_sample_image(image)
        assert rgb.shape == (image.height, image.width, 3) and rgb.dtype == np.uint8
        boxes = gt.boxes(image.id)
        assert len(boxes) >= 1
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= image.width) and np.all(boxes[:, 3] <= image.height)
    queries = load_queries(sample_queries_path(), gt)
    assert len(queries) >= 6 and len({q.image_id for q in queries}) == len(gt)


@pytest.mark.parametrize("storage", STORAGES)
def test_make_sample_bag_stamps_match_the_ground_truth(tmp_path, storage):
    gt = GroundTruth.load(sample_annotations_path())
    bag = make_sample_bag(tmp_path / "sample", storage, with_ground_truth_topic=True)
    with BagReader(bag) as reader:
        assert reader.storage == storage
        assert reader.image_topic() == SAMPLE_IMAGE_TOPIC
        frames = list(reader.image_frames(SAMPLE_IMAGE_TOPIC))
        assert [f.stamp_ns for f in frames] == gt.stamps_ns.tolist()
        assert {f.frame_id for f in frames} == {SAMPLE_FRAME_ID}
        assert {f.message.encoding for f in frames} == {"rgb8"}
        np.testing.assert_array_equal(frames[0].rgb(), load_sample_image(gt.images[0]))
        from_topic = reader.ground_truth(GROUND_TRUTH_TOPIC, SAMPLE_IMAGE_TOPIC)
    assert from_topic.categories == gt.categories
    for mine, theirs in zip(from_topic.images, gt.images, strict=True):
        assert (mine.stamp_ns, mine.width, mine.height) == (theirs.stamp_ns, theirs.width, theirs.height)
        assert from_topic.labels(mine.id) == gt.labels(theirs.id)
        np.testing.assert_allclose(from_topic.boxes(mine.id), gt.boxes(theirs.id))
    with pytest.raises(BagError, match="already exists"):
        make_sample_bag(tmp_path / "sample", storage)


def test_ensure_sample_bag_rebuilds_a_broken_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "metadata.yaml").write_text("garbage: [")
    bag = ensure_sample_bag(cache)
    with BagReader(bag) as reader:
        assert len(reader.image_stamps(SAMPLE_IMAGE_TOPIC)) == len(GroundTruth.load(sample_annotations_path()))
    assert ensure_sample_bag(cache) == bag  # a valid cache is reused as is


# --- ground truth files ---------------------------------------------------------------------------
def coco(**image_fields):
    image = {"id": 1, "width": 100, "height": 80, "stamp_ns": T0, **image_fields}
    return {
        "images": [image],
        "categories": [{"id": 3, "name": "Red Mug"}],
        "annotations": [{"id": 9, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0}],
    }


def test_coco_ground_truth_parsing_and_stamp_forms(tmp_path):
    gt = GroundTruth.from_coco(coco())
    assert gt.categories == ("red mug",)
    np.testing.assert_array_equal(gt.boxes(1), [[10, 20, 40, 60]])
    nested = coco(stamp={"sec": 1_700_000_000, "nanosec": 123_456_789})
    del nested["images"][0]["stamp_ns"]
    assert GroundTruth.from_coco(nested).images[0].stamp_ns == T0
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco()))
    assert GroundTruth.load(path).source == str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["images"][0].pop("stamp_ns"), "no 'stamp_ns'"),
        (lambda d: d["images"][0].update(stamp_ns=1.5), "stamp_ns must be a non-negative int"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 4]), "empty or non-finite bbox"),
        (lambda d: d["annotations"][0].update(category_id=99), "category_id"),
        (lambda d: d["annotations"][0].update(image_id=5), "unknown image 5"),
        (lambda d: d["images"].append(dict(d["images"][0], id=2)), "share stamp_ns"),
        (lambda d: d.pop("annotations"), "'annotations'"),
    ],
)
def test_malformed_ground_truth_is_named(change, message):
    data = coco()
    change(data)
    with pytest.raises(ValueError, match=message):
        GroundTruth.from_coco(data)


def test_ground_truth_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        GroundTruth.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GroundTruth.load(tmp_path / "bad.json")


def test_queries_are_checked_against_the_ground_truth(tmp_path):
    gt = GroundTruth.from_coco(coco())
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"queries": [{"id": "a", "image_id": 1, "phrase": "the mug", "annotation_id": 9}]}))
    assert load_queries(path, gt)[0].phrase == "the mug"
    path.write_text(json.dumps({"queries": [{"id": "a", "image_id": 1, "phrase": "the mug", "annotation_id": 10}]}))
    with pytest.raises(ValueError, match="no annotation with id 10"):
        load_queries(path, gt)
    path.write_text(json.dumps({"queries": [{"id": "a", "image_id": 1}]}))
    with pytest.raises(ValueError, match="needs image_id, phrase and annotation_id"):
        load_queries(path, gt)


def test_stamp_matching_exact_tolerant_and_nothing():
    gt = GroundTruth.from_coco(
        {
            "images": [{"id": i, "width": 10, "height": 10, "stamp_ns": T0 + i * 100_000_000} for i in (1, 2, 3)],
            "annotations": [],
            "categories": [],
        }
    )
    exact = match_stamps(gt, [T0 + 100_000_000, T0 + 300_000_000, T0 + 450_000_000])
    assert {stamp: image.id for stamp, image in exact.items()} == {T0 + 100_000_000: 1, T0 + 300_000_000: 3}
    near = match_stamps(gt, [T0 + 199_000_000, T0 + 201_500_000], tolerance_ns=2_000_000)
    assert {stamp: image.id for stamp, image in near.items()} == {T0 + 199_000_000: 2}  # the closer stamp wins
    with pytest.raises(ValueError, match="no ground-truth stamp matches.*do not overlap.*another bag"):
        match_stamps(gt, [T0 + 5 * 10**9])  # seconds apart: other data, a tolerance would not help
    with pytest.raises(ValueError, match="no ground-truth stamp matches.*stamp_ns.*--stamp-tolerance-ms"):
        match_stamps(gt, [T0 + 150_000_000])  # among the annotated stamps, just not on one
