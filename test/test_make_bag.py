"""`chatrex-ros make-bag`: a COCO-format dataset (+ RefCOCO-style refs) into a rosbag2 and its ground truth.

The dataset is synthetic: 300 small images with 1-3 coloured rectangles (the annotated objects, 5 categories),
some grey, one RGBA, one file missing and one corrupt, plus a refs file; every expected pixel is regenerated
from the image id, so nothing but the bag holds the images.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from chatrex_ros.cli import main
from chatrex_ros.eval.bagio import BagReader
from chatrex_ros.eval.groundtruth import GroundTruth, load_queries
from chatrex_ros.eval.make_bag import (
    START_STAMP_NS,
    MakeBagError,
    MakeBagOptions,
    load_dataset,
    make_bag,
    read_rgb,
    start_stamp_ns,
)

WIDTH, HEIGHT = 64, 48
COUNT = 300
CATEGORIES = ["red box", "green box", "blue box", "yellow box", "white box"]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 255, 255)]
GREY_IDS = {5, 17, 42, 99}
RGBA_ID = 7
MISSING_ID = 11
CORRUPT_ID = 23
CROWD_IMAGE = 30  # one extra crowd annotation: left out of the GT, yet its category counts as present
TOPIC = "/camera/image_raw"


def objects(image_id: int, width: int = WIDTH, height: int = HEIGHT) -> list[tuple[int, list[int]]]:
    """(category index, [x, y, w, h]) of the image's rectangles, from its id alone."""
    rng = np.random.default_rng(image_id)
    found = []
    for _ in range(int(rng.integers(1, 4))):
        w, h = int(rng.integers(6, width // 2)), int(rng.integers(6, height // 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        found.append((int(rng.integers(0, len(CATEGORIES))), [x, y, w, h]))
    return found


def pixels(image_id: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The RGB image make-bag must write for ``image_id`` (grey ones replicated)."""
    rgb = np.full((height, width, 3), 40 + image_id % 50, np.uint8)
    for category, (x, y, w, h) in objects(image_id, width, height):
        rgb[y : y + h, x : x + w] = COLOURS[category]
    if image_id in GREY_IDS:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    return rgb


def write_image_file(path: Path, image_id: int, width: int = WIDTH, height: int = HEIGHT) -> None:
    rgb = pixels(image_id, width, height)
    if image_id in GREY_IDS:
        cv2.imwrite(str(path), rgb[:, :, 0])
    elif image_id == RGBA_ID:
        alpha = np.full((height, width, 1), 128, np.uint8)
        cv2.imwrite(str(path), np.concatenate([rgb[:, :, ::-1], alpha], axis=2))
    else:
        cv2.imwrite(str(path), rgb[:, :, ::-1])


def write_dataset(root: Path, count: int = COUNT, width: int = WIDTH, height: int = HEIGHT) -> dict[str, Path]:
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        name = f"{image_id:06d}.png"
        images.append({"id": image_id, "file_name": name, "width": width, "height": height, "license": 1})
        for category, box in objects(image_id, width, height):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category + 1, "bbox": box}
            )
            annotations[-1].update({"area": box[2] * box[3], "iscrowd": 0})
        if image_id == MISSING_ID:
            continue
        if image_id == CORRUPT_ID:
            (images_dir / name).write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
            continue
        write_image_file(images_dir / name, image_id, width, height)
    annotations.append({"id": 10_000, "image_id": CROWD_IMAGE, "category_id": 5, "bbox": [0, 0, 5, 5], "iscrowd": 1})
    coco = {
        "info": {"description": "synthetic rectangles"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "box"} for i, name in enumerate(CATEGORIES)],
    }
    (root / "instances.json").write_text(json.dumps(coco))
    return {"images": images_dir, "annotations": root / "instances.json"}


def write_refs(root: Path, annotations_path: Path) -> Path:
    """A RefCOCO-style refs file: sentences lists, one entry with 'phrase' and 'annotation_id', no ref_id."""
    coco = json.loads(annotations_path.read_text())
    first = {}
    for annotation in coco["annotations"]:
        first.setdefault(annotation["image_id"], annotation)
    refs = []
    for image_id in (1, 2, 3, 6, MISSING_ID, 40, 41):
        annotation = first[image_id]
        name = CATEGORIES[annotation["category_id"] - 1]
        sentences = [{"sent": f"the {name}", "tokens": ["the", *name.split()]}, {"sent": f"that {name} there"}]
        refs.append(
            {"ref_id": 100 + image_id, "ann_id": annotation["id"], "image_id": image_id, "sentences": sentences}
        )
    refs.append({"annotation_id": first[50]["id"], "phrase": "  the  thing on image fifty "})
    path = root / "refs.json"
    path.write_text(json.dumps({"refs": refs}))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coco")
    paths = write_dataset(root)
    paths["refs"] = write_refs(root, paths["annotations"])
    return paths


def convert(dataset: dict[str, Path], out: Path, warnings: list[str] | None = None, **options):
    opts = MakeBagOptions(
        images=dataset["images"], annotations=dataset["annotations"], out=out, progress=False, **options
    )
    return make_bag(opts, warn=(warnings.append if warnings is not None else lambda line: None))


def written_ids(gt_path: Path) -> list[int]:
    return [image["id"] for image in json.loads(gt_path.read_text())["images"]]


# --- the bag --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_rgb8(dataset, tmp_path_factory) -> tuple[Path, object, list[str]]:
    warnings: list[str] = []
    out = tmp_path_factory.mktemp("full") / "bag"
    summary = convert(dataset, out, warnings, refs=dataset["refs"], negatives=2, rate_hz=20.0)
    return out, summary, warnings


def test_the_bag_holds_exactly_the_written_images_in_order_with_stamps_and_pixels(dataset, full_rgb8) -> None:
    out, summary, _ = full_rgb8
    expected_ids = [i for i in range(1, COUNT + 1) if i not in (MISSING_ID, CORRUPT_ID)]
    assert summary.images_written == len(expected_ids) == COUNT - 2
    assert written_ids(Path(f"{out}_annotations.json")) == expected_ids
    with BagReader(out) as reader:
        assert reader.storage == "mcap"
        assert reader.topics[TOPIC].msgtype == "sensor_msgs/msg/Image"
        assert reader.topics[TOPIC].count == len(expected_ids)
        frames = list(reader.image_frames(TOPIC))
    stamps = [frame.stamp_ns for frame in frames]
    first = start_stamp_ns(load_dataset(dataset["annotations"]).images)  # every image tried, in file order
    assert stamps[0] == first and (first - START_STAMP_NS) % 1_000_000_000 == 0
    assert set(np.diff(stamps)) == {50_000_000}  # 20 Hz
    assert all(frame.log_time_ns == frame.stamp_ns for frame in frames)
    assert {frame.frame_id for frame in frames} == {"camera"}
    for image_id, frame in zip(expected_ids, frames, strict=True):
        assert frame.message.encoding == "rgb8"
        np.testing.assert_array_equal(frame.rgb(), pixels(image_id), err_msg=f"image {image_id}")


def test_two_parts_of_a_split_get_distinct_stamps_so_the_wrong_ground_truth_matches_nothing(
    dataset, tmp_path, capsys
) -> None:
    source = json.loads(dataset["annotations"].read_text())
    parts = {}
    for name, images in (("day0", source["images"][:20]), ("day1", source["images"][20:40])):
        ids = {image["id"] for image in images}
        annotations = [a for a in source["annotations"] if a["image_id"] in ids]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**source, "images": images, "annotations": annotations}))
        parts[name] = convert({**dataset, "annotations": path}, tmp_path / name)
    again = convert({**dataset, "annotations": tmp_path / "day0.json"}, tmp_path / "day0_again")
    with BagReader(tmp_path / "day0") as first, BagReader(tmp_path / "day1") as second:
        day0, day1 = first.image_stamps(TOPIC), second.image_stamps(TOPIC)
    with BagReader(tmp_path / "day0_again") as reader:
        assert reader.image_stamps(TOPIC) == day0  # reproducible
    assert again.images_written == parts["day0"].images_written
    assert not set(day0) & set(day1)
    day1_gt = str(tmp_path / "day1_annotations.json")
    code = main(["eval", "--bag", str(tmp_path / "day0"), "--gt", day1_gt, "--out", str(tmp_path / "eval")])
    error = capsys.readouterr().err
    assert code == 2 and "no ground-truth stamp matches" in error and day1_gt in error  # not scored: said why
    assert "another bag" in error and "--stamp-tolerance-ms" not in error  # a tolerance would pair unrelated frames


def test_grey_and_rgba_files_become_rgb(dataset) -> None:
    grey = read_rgb(dataset["images"] / f"{min(GREY_IDS):06d}.png")
    assert grey.shape == (HEIGHT, WIDTH, 3) and grey.dtype == np.uint8
    assert (grey[:, :, 0] == grey[:, :, 2]).all()
    np.testing.assert_array_equal(read_rgb(dataset["images"] / f"{RGBA_ID:06d}.png"), pixels(RGBA_ID))


def test_16_bit_files_are_scaled_to_8_bits(tmp_path) -> None:
    grey16 = (np.arange(WIDTH * HEIGHT, dtype=np.uint16).reshape(HEIGHT, WIDTH) * 21) % 65535
    cv2.imwrite(str(tmp_path / "deep.png"), grey16.astype(np.uint16))
    rgb = read_rgb(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[:, :, 1], (grey16 >> 8).astype(np.uint8))


def test_the_ground_truth_has_stamps_for_written_images_and_only_their_annotations(dataset, full_rgb8) -> None:
    out, summary, _ = full_rgb8
    written = json.loads(Path(f"{out}_annotations.json").read_text())
    source = json.loads(dataset["annotations"].read_text())
    ids = {image["id"] for image in written["images"]}
    assert MISSING_ID not in ids and CORRUPT_ID not in ids
    assert all(image["frame_id"] == "camera" and image["license"] == 1 for image in written["images"])
    with BagReader(out) as reader:
        assert [image["stamp_ns"] for image in written["images"]] == reader.image_stamps(TOPIC)
    kept = [a for a in source["annotations"] if a["image_id"] in ids and not a["iscrowd"]]
    assert written["annotations"] == kept  # the dataset's ids and fields, unchanged
    assert summary.annotations == len(kept) and summary.annotations_dropped == 1  # the crowd region
    assert written["categories"] == source["categories"] and written["info"] == source["info"]
    gt = GroundTruth.load(Path(f"{out}_annotations.json"))  # what `eval --gt` reads
    assert len(gt) == COUNT - 2


def test_jpeg_encoding_writes_compressed_images_that_decode_close(dataset, tmp_path) -> None:
    summary = convert(dataset, tmp_path / "bag", encoding="jpeg", jpeg_quality=95, limit=25, rate_hz=30.0)
    assert summary.images_written == 25
    ids = written_ids(tmp_path / "bag_annotations.json")
    with BagReader(tmp_path / "bag") as reader:
        assert reader.topics[TOPIC].msgtype == "sensor_msgs/msg/CompressedImage"
        frames = list(reader.image_frames(TOPIC))
    stamps = [f.stamp_ns for f in frames]
    assert np.diff(stamps).tolist() == [round((k + 1) * 1e9 / 30) - round(k * 1e9 / 30) for k in range(24)]  # 1/30 s
    for image_id, frame in zip(ids, frames, strict=True):
        assert frame.message.format == "jpeg" and frame.frame_id == "camera"
        error = np.abs(frame.rgb().astype(int) - pixels(image_id).astype(int))
        # saturated colour edges lose most to chroma subsampling; flat areas are within a few levels
        assert error.mean() < 8 and np.median(error) <= 3, f"image {image_id}: mean error {error.mean()}"


def test_sqlite3_storage(dataset, tmp_path) -> None:
    summary = convert(dataset, tmp_path / "bag", storage="sqlite3", limit=8, topic="/cam/rgb", frame_id="optical")
    assert summary.images_written == 8 and summary.bag_bytes > 8 * WIDTH * HEIGHT * 3
    assert any(p.suffix == ".db3" for p in (tmp_path / "bag").iterdir())
    with BagReader(tmp_path / "bag") as reader:
        assert reader.storage == "sqlite3"
        frames = list(reader.image_frames("/cam/rgb"))
    assert [f.frame_id for f in frames] == ["optical"] * 8
    np.testing.assert_array_equal(frames[0].rgb(), pixels(1))


# --- order ----------------------------------------------------------------------------------------
def test_limit_takes_the_first_images_skipping_unreadable_ones(dataset, tmp_path) -> None:
    summary = convert(dataset, tmp_path / "bag", limit=12)
    assert written_ids(tmp_path / "bag_annotations.json") == [i for i in range(1, 14) if i != MISSING_ID]
    assert summary.images_written == 12 and len(summary.skipped) == 1
    assert not (tmp_path / "bag_queries.json").exists()  # no refs, no negatives: no queries file


def test_shuffle_is_deterministic_by_seed_and_differs_from_file_order(dataset, tmp_path) -> None:
    orders = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        convert(dataset, tmp_path / name, limit=40, shuffle=True, seed=seed)
        orders[name] = written_ids(tmp_path / f"{name}_annotations.json")
    assert orders["a"] == orders["b"]
    assert orders["a"] != orders["c"]
    assert orders["a"] != sorted(orders["a"]) and orders["a"] != list(range(1, 41))
    with BagReader(tmp_path / "a") as reader:
        first = next(reader.image_frames(TOPIC))
    np.testing.assert_array_equal(first.rgb(), pixels(orders["a"][0]))


# --- queries --------------------------------------------------------------------------------------
def test_refs_become_one_query_per_sentence_with_the_right_ids(dataset, tmp_path) -> None:
    summary = convert(dataset, tmp_path / "bag", refs=dataset["refs"])
    queries = json.loads((tmp_path / "bag_queries.json").read_text())["queries"]
    source = {a["id"]: a for a in json.loads(dataset["annotations"].read_text())["annotations"]}
    refs = [q for q in queries if q["id"].startswith("ref-")]
    assert len(refs) == summary.queries == 6 * 2 + 1  # 7 refs of 2 sentences, one on the missing image; 1 phrase
    assert len({q["id"] for q in queries}) == len(queries)
    assert {q["id"] for q in refs} >= {"ref-101-0", "ref-101-1", "ref-141-1", "ref-7-0"}
    assert not [q for q in refs if q["image_id"] == MISSING_ID]
    for query in refs:
        assert source[query["annotation_id"]]["image_id"] == query["image_id"]
    assert next(q for q in refs if q["id"] == "ref-7-0")["phrase"] == "the thing on image fifty"
    assert next(q for q in refs if q["id"] == "ref-102-1")["phrase"].startswith("that ")
    gt = GroundTruth.load(tmp_path / "bag_annotations.json")
    assert len(load_queries(tmp_path / "bag_queries.json", gt)) == len(refs)  # what `eval --queries` reads


def test_negatives_never_name_a_present_category_and_are_deterministic(dataset, full_rgb8, tmp_path) -> None:
    out, summary, _ = full_rgb8
    queries = json.loads(Path(f"{out}_queries.json").read_text())["queries"]
    negatives = [q for q in queries if q.get("negative")]
    assert len(negatives) == summary.negatives > 0
    present: dict[int, set[str]] = {}
    for annotation in json.loads(dataset["annotations"].read_text())["annotations"]:  # crowd included
        present.setdefault(annotation["image_id"], set()).add(CATEGORIES[annotation["category_id"] - 1])
    per_image: dict[int, list[str]] = {}
    for query in negatives:
        assert "annotation_id" not in query and query["negative"] is True
        assert query["phrase"] in CATEGORIES and query["phrase"] not in present[query["image_id"]]
        per_image.setdefault(query["image_id"], []).append(query["phrase"])
        assert query["id"] == f"neg-{query['image_id']}-{len(per_image[query['image_id']]) - 1}"
    for image_id in written_ids(Path(f"{out}_annotations.json")):
        assert len(per_image.get(image_id, [])) == min(2, len(CATEGORIES) - len(present[image_id]))
    assert "white box" not in per_image.get(CROWD_IMAGE, [])
    # the same seed gives the same negatives, whatever the order of the run
    convert(dataset, tmp_path / "again", negatives=2, rate_hz=20.0, shuffle=True, seed=0, limit=60)
    again = json.loads((tmp_path / "again_queries.json").read_text())["queries"]
    assert again and all(q in negatives for q in again)
    convert(dataset, tmp_path / "other", negatives=2, seed=5, limit=60)
    other = json.loads((tmp_path / "other_queries.json").read_text())["queries"]
    assert other != [q for q in negatives if q["image_id"] in {o["image_id"] for o in other}]


# --- what is skipped, refused -------------------------------------------------------------------------
def test_missing_and_corrupt_images_are_skipped_with_one_warning_each(full_rgb8) -> None:
    _, summary, warnings = full_rgb8
    assert len(warnings) == 2
    assert f"image {MISSING_ID} " in warnings[0] and "missing" in warnings[0]
    assert f"image {CORRUPT_ID} " in warnings[1] and "unreadable" in warnings[1]
    assert [name for name, _ in summary.skipped] == [f"{MISSING_ID:06d}.png", f"{CORRUPT_ID:06d}.png"]
    assert "skipped 2 missing or unreadable" in summary.paragraph()


def test_strict_fails_at_the_first_unreadable_image_and_leaves_nothing(dataset, tmp_path) -> None:
    reads: list[Path] = []
    opts = MakeBagOptions(dataset["images"], dataset["annotations"], tmp_path / "bag", strict=True, progress=False)
    with pytest.raises(MakeBagError, match=f"image {MISSING_ID} .*missing.*--strict"):
        make_bag(opts, warn=lambda line: None, read_image=lambda path: reads.append(path) or read_rgb(path))
    assert reads == []  # a missing file is found before any image is read and written
    coco = json.loads(dataset["annotations"].read_text())
    coco["images"] = [image for image in coco["images"] if image["id"] != MISSING_ID]
    (tmp_path / "present.json").write_text(json.dumps(coco))
    with pytest.raises(MakeBagError, match=f"image {CORRUPT_ID} .*--strict"):  # a corrupt file: found at its turn
        convert({**dataset, "annotations": tmp_path / "present.json"}, tmp_path / "bag", strict=True)
    assert not (tmp_path / "bag").exists() and not (tmp_path / "bag_annotations.json").exists()
    assert convert(dataset, tmp_path / "bag", strict=True, limit=5).images_written == 5  # before the missing one


def test_strict_refusing_a_missing_file_keeps_the_bag_it_would_have_replaced(dataset, tmp_path) -> None:
    assert convert(dataset, tmp_path / "bag", limit=5).images_written == 5
    with pytest.raises(MakeBagError, match=f"image {MISSING_ID} .*missing.*--strict"):
        convert(dataset, tmp_path / "bag", strict=True, overwrite=True)
    with BagReader(tmp_path / "bag") as reader:  # the earlier bag, untouched
        assert reader.topics[TOPIC].count == 5
    assert Path(f"{tmp_path / 'bag'}_annotations.json").is_file()


def test_a_dataset_with_no_readable_image_writes_nothing(dataset, tmp_path) -> None:
    coco = json.loads(dataset["annotations"].read_text())
    coco["images"] = [i for i in coco["images"] if i["id"] in (MISSING_ID, CORRUPT_ID)]
    (tmp_path / "broken.json").write_text(json.dumps(coco))
    with pytest.raises(MakeBagError, match="none of the 2 images"):
        convert({**dataset, "annotations": tmp_path / "broken.json"}, tmp_path / "bag", negatives=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json"]


def test_an_image_of_another_size_than_annotated_is_skipped(dataset, tmp_path) -> None:
    coco = json.loads(dataset["annotations"].read_text())
    coco["images"][0]["width"] = 100
    (tmp_path / "wrong.json").write_text(json.dumps(coco))
    warnings: list[str] = []
    convert({**dataset, "annotations": tmp_path / "wrong.json"}, tmp_path / "bag", warnings, limit=3)
    assert written_ids(tmp_path / "bag_annotations.json") == [2, 3, 4]
    assert "is 64x48, the annotations say 100x48" in warnings[0]


def test_existing_outputs_are_refused_without_force(dataset, tmp_path, capsys) -> None:
    convert(dataset, tmp_path / "bag", limit=3)
    with pytest.raises(MakeBagError, match="already exists; pass --force"):
        convert(dataset, tmp_path / "bag", limit=4)
    assert convert(dataset, tmp_path / "bag", limit=4, overwrite=True).images_written == 4
    assert len(written_ids(tmp_path / "bag_annotations.json")) == 4
    (tmp_path / "notabag").mkdir()
    (tmp_path / "notabag" / "thesis.tex").write_text("precious")
    with pytest.raises(MakeBagError, match="not a rosbag2 directory"):
        convert(dataset, tmp_path / "notabag", overwrite=True)
    assert (tmp_path / "notabag" / "thesis.tex").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limit": 0}, "--limit must be >= 1"),
        ({"rate_hz": 0.0}, "--rate must be"),
        ({"jpeg_quality": 101}, "--jpeg-quality"),
        ({"negatives": -1}, "--negatives"),
        ({"topic": "camera"}, "absolute topic"),
        ({"storage": "rosbag1"}, "unknown storage"),
    ],
)
def test_bad_options_are_refused(dataset, tmp_path, options, message) -> None:
    with pytest.raises(MakeBagError, match=message):
        convert(dataset, tmp_path / "bag", **options)
    assert not (tmp_path / "bag").exists()


def test_one_refs_file_serves_each_part_of_a_split(dataset, tmp_path) -> None:
    source = json.loads(dataset["annotations"].read_text())
    part = source["images"][:30]
    ids = {image["id"] for image in part}
    kept = [a for a in source["annotations"] if a["image_id"] in ids]
    (tmp_path / "part.json").write_text(json.dumps({**source, "images": part, "annotations": kept}))
    refs = json.loads(dataset["refs"].read_text())
    entries = refs["refs"] if isinstance(refs, dict) else refs
    outside = [e for e in entries if e.get("ann_id", e.get("annotation_id")) not in {a["id"] for a in kept}]
    assert outside and len(outside) < len(entries)  # the fixture's refs cover other images too
    summary = convert({**dataset, "annotations": tmp_path / "part.json"}, tmp_path / "bag", refs=dataset["refs"])
    assert summary.refs_outside_dataset == len(outside)
    assert f"{len(outside)} refs of annotations not in this dataset dropped" in summary.paragraph()
    queries = json.loads((tmp_path / "bag_queries.json").read_text())["queries"]
    assert queries and all(q["image_id"] in ids for q in queries)


def test_bad_refs_are_refused_before_anything_is_written(dataset, tmp_path) -> None:
    (tmp_path / "refs.json").write_text(json.dumps([{"ann_id": 987654, "sentences": [{"sent": "x"}]}]))
    with pytest.raises(MakeBagError, match="none of its 1 entries names an annotation of the dataset"):
        convert(dataset, tmp_path / "bag", refs=tmp_path / "refs.json")
    (tmp_path / "refs.json").write_text(json.dumps([{"ann_id": 1, "image_id": 2, "phrase": "x"}]))
    with pytest.raises(MakeBagError, match="annotation 1 is on image 1"):
        convert(dataset, tmp_path / "bag", refs=tmp_path / "refs.json")
    assert not (tmp_path / "bag").exists()


# --- the command ----------------------------------------------------------------------------------
def test_the_command_prints_a_summary_and_bad_input_is_one_line(dataset, tmp_path, capsys) -> None:
    args = ["make-bag", "--images", str(dataset["images"]), "--annotations", str(dataset["annotations"])]
    out = str(tmp_path / "bag")
    assert main([*args, "--out", out, "--limit", "15", "--negatives", "1", "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "wrote 15 images (rgb8) on /camera/image_raw" in printed.out
    assert "skipped 1 missing or unreadable" in printed.out and "15 negative queries" in printed.out
    assert "frames/s" in printed.out
    assert printed.err.count("warning: skipping image") == 1
    assert main([*args, "--out", out, "--limit", "15"]) == 2  # exists
    err = capsys.readouterr().err
    assert err.startswith("chatrex-ros make-bag: error:") and "--force" in err and "Traceback" not in err
    bad = ["make-bag", "--images", str(dataset["images"]), "--annotations", str(tmp_path / "none.json")]
    assert main([*bad, "--out", str(tmp_path / "b2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_eval_scores_a_made_bag(dataset, tmp_path, capsys) -> None:
    """The real `chatrex-ros eval` (default config: selective search, no language model) on a made bag."""
    bag = tmp_path / "bag"
    make = ["make-bag", "--images", str(dataset["images"]), "--annotations", str(dataset["annotations"])]
    assert main([*make, "--out", str(bag), "--refs", str(dataset["refs"]), "--limit", "12", "--encoding", "jpeg"]) == 0
    code = main(
        [
            "eval",
            "--bag",
            str(bag),
            "--gt",
            f"{bag}_annotations.json",
            "--queries",
            f"{bag}_queries.json",
            "--out",
            str(tmp_path / "results"),
            "--no-progress",
            "--no-plots",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
    proposals = metrics["metrics"]["proposals"]
    assert proposals["frames"] == 12 and metrics["inputs"]["frames_evaluated"] == 12
    assert set(proposals["recall"]) and "recall" in printed.out.lower()


# --- streaming ------------------------------------------------------------------------------------
def test_images_are_read_one_at_a_time_just_before_each_write(dataset, tmp_path, monkeypatch) -> None:
    from chatrex_ros.eval import make_bag as module

    events: list[str] = []
    original_write = module.BagWriter.write_image

    def write(self, topic, rgb, stamp, frame_id, **options) -> None:
        events.append("write")
        original_write(self, topic, rgb, stamp, frame_id, **options)

    def read(path: Path) -> np.ndarray:
        events.append("read")
        return read_rgb(path)

    monkeypatch.setattr(module.BagWriter, "write_image", write)
    opts = MakeBagOptions(dataset["images"], dataset["annotations"], tmp_path / "bag", limit=30, progress=False)
    make_bag(opts, warn=lambda line: None, read_image=read)
    # the missing (11) and corrupt (23) images are a read without a write; otherwise read, write, read, write, ...
    expected = ["read", "write"] * 10 + ["read"] + ["read", "write"] * 11 + ["read"] + ["read", "write"] * 9
    assert events == expected


def test_memory_stays_bounded_for_thousands_of_images(tmp_path) -> None:
    """2,000 images of 160x120 (115 MB of pixels): the conversion's peak allocation stays a small fraction."""
    count, width, height = 2000, 160, 120
    paths = write_dataset(tmp_path / "big", count, width, height)
    tracemalloc.start()
    try:
        summary = make_bag(
            MakeBagOptions(paths["images"], paths["annotations"], tmp_path / "bag", progress=False),
            warn=lambda line: None,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.images_written == count - 2
    held_if_not_streamed = count * width * height * 3
    assert peak < 25e6, f"peak {peak / 1e6:.1f} MB for {held_if_not_streamed / 1e6:.0f} MB of images"
