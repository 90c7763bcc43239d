"""Offline evaluation end to end: the sample bag with the default backend, exact scores with model doubles,
scoring of recorded answers, the CLI and its errors.

The model doubles below stand in for the UPN checkpoint and the ChatRex-7B checkpoint (outside the package):
they answer from the ground truth with a known, deliberate error, so the expected precision, recall and
referring accuracy are known exactly and the whole path (bag -> core -> records -> scoring) is checked.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from chatrex_ros.cli import main
from chatrex_ros.core.answering import AnswerStatus
from chatrex_ros.core.types import RawProposals
from chatrex_ros.eval.bagio import BagError, BagReader, BagWriter
from chatrex_ros.eval.groundtruth import GroundTruth, load_queries
from chatrex_ros.eval.offline import NO_LANGUAGE_NOTE, evaluate_bag
from chatrex_ros.eval.recorded import evaluate_recorded, log_time_rate
from chatrex_ros.eval.records import AnswerRecord, evaluation_requests
from chatrex_ros.eval.report import UNMEASURED_LABEL, ZERO_LABEL, per_class_figure, render_markdown, write_outputs
from chatrex_ros.eval.sample import (
    SAMPLE_FRAME_ID,
    SAMPLE_IMAGE_TOPIC,
    load_sample_image,
    make_sample_bag,
    sample_annotations_path,
    sample_queries_path,
)
from chatrex_ros.eval.scoring import answers_not_available, score_answers
from chatrex_ros.models.base import ProposalPipeline
from chatrex_ros.models.registry import make_proposal_backend

MISSED_CATEGORY = "tower"  # the language double never finds these (4 objects, 1 frame)
FALSE_POSITIVE_CATEGORY = "cup"  # ...and adds one wrong box to this one
WRONG_QUERY = "camera-tripod"  # ...and answers this referring query with a wrong box


def fingerprint(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


# Tiny boxes in the top-left corner: they overlap no annotated object with IoU >= 0.5, nor each other > 0.8.
DISTRACTORS = np.array([[1 + 6 * i, 1, 5 + 6 * i, 5] for i in range(5)], dtype=np.float32)


class TruthProposalsTestDouble:
    """TEST DOUBLE for a UPN checkpoint: proposes the annotated boxes (best scores) plus 5 distractors."""

    name = "truth_proposals_test_double"

    def __init__(self, gt: GroundTruth) -> None:
        self.boxes = {fingerprint(load_sample_image(i)): gt.boxes(i.id).astype(np.float32) for i in gt.images}

    def propose(self, image_rgb: np.ndarray) -> RawProposals:
        truth = self.boxes[fingerprint(image_rgb)]
        boxes = np.vstack([truth, DISTRACTORS])
        scores = np.concatenate([0.95 - 0.01 * np.arange(len(truth)), 0.5 - 0.01 * np.arange(len(DISTRACTORS))])
        return RawProposals(boxes, scores.astype(np.float32))


class GroundTruthOracleTestDouble:
    """TEST DOUBLE for the ChatRex-7B checkpoint: answers detect prompts from the ground truth, with the known
    errors above, in the model's output grammar (so the real parser and resolution run)."""

    name = "ground_truth_oracle_test_double"

    def __init__(self, gt: GroundTruth, queries) -> None:
        self.objects = {fingerprint(load_sample_image(i)): gt.objects(i.id) for i in gt.images}
        self.referring = {q.phrase: (q.id, gt.object(q.annotation_id).box) for q in queries}
        self.prompts: list[str] = []

    def generate(self, image_rgb, boxes_xyxy, prompt, max_new_tokens=512):
        self.prompts.append(prompt)
        objects = self.objects[fingerprint(image_rgb)]
        phrases = re.fullmatch(
            r"Please detect (.*) in this image\. Answer the question with object indexes\.", prompt
        ).group(1)
        answer = ""
        for phrase in phrases.split("; "):
            if phrase in self.referring:
                query_id, box = self.referring[phrase]
                index = len(boxes_xyxy) - 1 if query_id == WRONG_QUERY else self._index(boxes_xyxy, box)
                indices = [index]
            elif phrase == MISSED_CATEGORY:
                continue
            else:
                indices = [self._index(boxes_xyxy, o.box) for o in objects if o.category == phrase]
                if phrase == FALSE_POSITIVE_CATEGORY:
                    indices.append(len(boxes_xyxy) - 1)  # a distractor: the lowest-scored proposal
            answer += f"<ground>{phrase}</ground><objects>{''.join(f'<obj{i}>' for i in indices)}</objects>"
        return answer

    @staticmethod
    def _index(boxes, box):
        return int(np.argmin(np.abs(np.asarray(boxes) - np.asarray(box)).sum(axis=1)))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    gt = GroundTruth.load(sample_annotations_path())
    return {
        "bag": make_sample_bag(root / "bag"),
        "gt": gt,
        "queries": load_queries(sample_queries_path(), gt),
        "root": root,
    }


@pytest.fixture(scope="module")
def demo_run(sample):
    """`chatrex-ros demo` with the default (weight-free) backends: the README's main job."""
    out = sample["root"] / "demo"
    code = main(["demo", "--out", str(out), "--sample-bag", str(sample["bag"]), "--no-progress", "--quiet"])
    return code, out


def test_demo_with_default_backend_writes_sane_reports(demo_run, sample):
    code, out = demo_run
    assert code == 0
    for name in ("metrics.json", "report.md", "recall_vs_k.png", "per_class_pr.png", "latency_hist.png"):
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "metrics.json").read_text())
    proposals = report["metrics"]["proposals"]
    assert report["inputs"]["proposal_backend"] == "selective_search"
    assert report["inputs"]["frames_evaluated"] == len(sample["gt"]) == report["timing"]["frames"]
    assert proposals["frames_without_proposals"] == [] and 0 < proposals["count_mean"] <= 100
    recall_50 = [proposals["recall"][k]["iou_0.5"] for k in ("10", "30", "100")]
    recall_avg = [proposals["recall"][k]["iou_0.5:0.95"] for k in ("10", "30", "100")]
    assert recall_50 == sorted(recall_50) and recall_avg == sorted(recall_avg)  # more proposals never find less
    assert all(a <= b for a, b in zip(recall_avg, recall_50, strict=True))  # stricter IoU never finds more
    assert 0.3 <= recall_50[-1] <= 1.0  # selective search finds a fair share of these large objects
    assert 0.0 <= proposals["class_agnostic_coco"]["AP"] <= proposals["class_agnostic_coco"]["AP50"] <= 1.0
    answers = report["metrics"]["answers"]  # present, saying why there is nothing: not zeros
    assert answers["available"] is False and answers["no_language_model"] is True
    assert answers["detection"] is None and answers["referring"] is None
    assert NO_LANGUAGE_NOTE in report["notes"]
    markdown = (out / "report.md").read_text()
    assert "need one (--language-backend chatrex --model-path DIR" in markdown
    assert "| 100 |" in markdown and "frames/s" in markdown
    stages = report["timing"]["stages_ms"]
    assert stages["infer"]["count"] == len(sample["gt"]) and stages["infer"]["p50"] <= stages["infer"]["p99"]


def test_after_the_demo_eval_of_its_sample_bag_finds_the_ground_truth_beside_it(demo_run, sample, tmp_path):
    _, out = demo_run
    bag = sample["bag"]
    assert Path(f"{bag}_annotations.json").is_file() and Path(f"{bag}_queries.json").is_file()
    assert main(["eval", "--bag", str(bag), "--out", str(tmp_path), "--no-progress", "--quiet", "--no-plots"]) == 0
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["metrics"]["proposals"] == json.loads((out / "metrics.json").read_text())["metrics"]["proposals"]
    assert again["inputs"]["queries_file"] == f"{bag}_queries.json"


def test_offline_metrics_are_deterministic_within_one_process(demo_run, sample):
    """Selective search draws on libc rand(): a second run in the same process must still agree."""
    _, out = demo_run
    first = json.loads((out / "metrics.json").read_text())
    again = evaluate_bag(
        sample["bag"],
        sample["gt"],
        ProposalPipeline(make_proposal_backend("selective_search")),
        None,
        sample["queries"],
        progress=False,
    )
    second = json.loads(json.dumps(again.to_json()))
    assert first["metrics"] == second["metrics"]
    cli_only = ("bag", "queries_file", "ground_truth")  # where the files were read from: the demo's copies
    assert {k: v for k, v in first["inputs"].items() if k not in cli_only} == {
        k: v for k, v in second["inputs"].items() if k not in cli_only
    }


@pytest.fixture(scope="module")
def oracle_run(sample):
    language = GroundTruthOracleTestDouble(sample["gt"], sample["queries"])
    pipeline = ProposalPipeline(TruthProposalsTestDouble(sample["gt"]))
    result = evaluate_bag(sample["bag"], sample["gt"], pipeline, language, sample["queries"], progress=False)
    return result, language


def test_detection_and_referring_scores_with_known_model_errors(oracle_run, sample):
    result, language = oracle_run
    gt = sample["gt"]
    categories = len(gt.categories)
    answers = result.metrics["answers"]
    detection = answers["detection"]
    # every class perfect except: tower never answered (P 0, R 0), cup with one false positive (P 0.5, R 1)
    assert detection["precision_iou_0.5"] == pytest.approx((categories - 2 + 0.5) / categories, abs=1e-6)
    assert detection["recall_iou_0.5"] == pytest.approx((categories - 1) / categories, abs=1e-6)
    assert detection["per_class"]["tower"] == {"tp": 0, "fp": 0, "fn": 4, "precision": None, "recall": 0.0}
    assert detection["per_class"]["cup"] == {"tp": 1, "fp": 1, "fn": 0, "precision": 0.5, "recall": 1.0}
    # the false positive has the lowest score, so it costs no AP; the missed class costs its whole AP
    assert detection["coco"]["AP"] == pytest.approx((categories - 1) / categories, abs=1e-6)
    referring = answers["referring"]
    assert referring["queries"] == len(sample["queries"])
    assert referring["hits"] == len(sample["queries"]) - 1 and referring["per_query"][WRONG_QUERY] is False
    assert answers["status_counts"] == {"OK": len(gt) + len(sample["queries"])}
    assert result.metrics["proposals"]["recall"]["10"] == {"iou_0.5": 1.0, "iou_0.5:0.95": 1.0}
    # the detection prompt of the coffee frame names exactly its categories, in vocabulary order
    assert (
        "Please detect cup; saucer; spoon in this image. Answer the question with object indexes." in language.prompts
    )
    markdown = render_markdown(result.to_json())
    assert "## Detection" in markdown and f"{referring['hits']} of {referring['queries']} queries" in markdown
    assert result.stage_ms["language"] and len(result.stage_ms["resolve"]) == len(gt)


def test_recorded_answers_score_like_the_offline_run_and_report_drops_and_latency(oracle_run, sample, tmp_path):
    result, _ = oracle_run
    gt = sample["gt"]
    dropped = gt.images[2]
    recorded = tmp_path / "recorded"
    with BagWriter(recorded, "sqlite3") as writer:
        for image in gt.images:
            writer.write_image(SAMPLE_IMAGE_TOPIC, load_sample_image(image), image.stamp_ns, SAMPLE_FRAME_ID)
        for record in result.proposals:
            if record.stamp_ns != dropped.stamp_ns:  # the node dropped this frame
                writer.write_proposals(
                    "/chatrex/proposals", record, SAMPLE_FRAME_ID, log_time_ns=record.stamp_ns + 40_000_000
                )
        for record in result.answers:
            writer.write_answer("/chatrex/answer", record, SAMPLE_FRAME_ID, log_time_ns=record.stamp_ns + 250_000_000)
    scored = evaluate_recorded(recorded, gt, sample["queries"])
    assert scored.metrics["answers"] == result.metrics["answers"]  # same answers, same numbers
    with BagReader(recorded) as reader:  # a replay may hand over the messages as read
        messages = [msg for _, msg in reader.messages("/chatrex/answer")]
    assert score_answers(messages, gt, sample["queries"], [i.id for i in gt.images]) == result.metrics["answers"]
    assert scored.metrics["proposals"]["frames_without_proposals"] == [dropped.id]
    objects = sum(len(gt.objects(i.id)) for i in gt.images)
    lost = len(gt.objects(dropped.id))
    assert scored.metrics["proposals"]["recall"]["100"]["iou_0.5"] == pytest.approx(
        (objects - lost) / objects, abs=1e-6
    )
    latency = scored.timing["stages_ms"]
    assert latency["answers"]["p50"] == pytest.approx(250.0) and latency["proposals"]["p99"] == pytest.approx(40.0)
    assert (
        scored.inputs["answer_topic"] == "/chatrex/answer" and scored.inputs["proposal_topic"] == "/chatrex/proposals"
    )
    files = write_outputs(scored, tmp_path / "out", plots=False)
    assert "## Referring" in files["report"].read_text()
    # throughput is the recorded pipeline's (log time), not the scorer's speed
    assert "frames_per_s" not in scored.timing and scored.timing["scoring_s"] > 0
    span_s = (gt.images[-1].stamp_ns - gt.images[0].stamp_ns) / 1e9
    answers_rate = scored.timing["recorded_throughput"]["answers"]
    assert answers_rate["count"] == len(result.answers) and answers_rate["span_s"] == pytest.approx(span_s)
    assert answers_rate["per_s"] == pytest.approx((len(result.answers) - 1) / span_s)
    assert "answers/s" in files["report"].read_text() and "Throughput:" not in files["report"].read_text()


NO_MODEL = "no language model configured: set language_backend:=chatrex and model_path:=<ChatRex-7B dir>"


def _record_without_a_model(oracle_run, sample, path):
    """What `chatrex-ros replay --gt` records from a graph started without a language model."""
    result, _ = oracle_run
    gt = sample["gt"]
    failed = [
        AnswerRecord(
            image.stamp_ns,
            query_id,
            "detect",
            status=int(AnswerStatus.MODEL_ERROR),
            status_message=NO_MODEL,
            received_ns=image.stamp_ns + 50_000_000,
        )
        for image in gt.images
        for query_id, _ in evaluation_requests(gt, image.id, sample["queries"])
    ]
    with BagWriter(path) as writer:
        for image in gt.images:
            writer.write_image(SAMPLE_IMAGE_TOPIC, load_sample_image(image), image.stamp_ns, SAMPLE_FRAME_ID)
        for record in result.proposals:
            writer.write_proposals(
                "/chatrex/proposals", record, SAMPLE_FRAME_ID, log_time_ns=record.stamp_ns + 40_000_000
            )
        for record in failed:
            writer.write_answer("/chatrex/answer", record, SAMPLE_FRAME_ID)
    return failed


def test_recorded_answers_without_a_language_model_are_not_available_not_zero(oracle_run, sample, tmp_path, capsys):
    failed = _record_without_a_model(oracle_run, sample, tmp_path / "rec")
    count = len(failed)
    scored = evaluate_recorded(tmp_path / "rec", sample["gt"], sample["queries"])
    answers = scored.metrics["answers"]
    assert answers["available"] is False and answers["detection"] is None and answers["referring"] is None
    assert answers["no_language_model"] and answers["status_counts"] == {"MODEL_ERROR": count}
    assert f'MODEL_ERROR: {count} ("no language model configured' in answers["reason"]
    assert scored.metrics["proposals"]["recall"]["10"]["iou_0.5"] == 1.0  # proposal metrics still reported
    assert any("not available" in note and "language_backend:=chatrex" in note for note in scored.notes)
    markdown = render_markdown(scored.to_json())
    assert "Not available: no answer in the recording is OK" in markdown
    assert "Precision" not in markdown and "## Referring" not in markdown

    out = tmp_path / "out"  # the CLI, plots included: the same message, even with --quiet
    assert (
        main(
            [
                "eval",
                "--answers",
                str(tmp_path / "rec"),
                "--gt",
                str(sample_annotations_path()),
                "--queries",
                str(sample_queries_path()),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert f"not available: no answer in the recording is OK (MODEL_ERROR: {count}" in capsys.readouterr().err
    stored = json.loads((out / "metrics.json").read_text())["metrics"]["answers"]
    assert stored["detection"] is None and stored["status_counts"] == {"MODEL_ERROR": count}
    assert (out / "per_class_pr.png").stat().st_size > 0  # proposal recall per class, as offline without a model


def test_answers_not_available_only_without_any_ok_answer():
    assert answers_not_available([])["reason"] == "the recording has no answers"
    busy = AnswerRecord(1, "eval-detect/1", "detect", status=int(AnswerStatus.BUSY), status_message="queue full")
    entry = answers_not_available([busy])
    assert entry["reason"] == 'no answer in the recording is OK (BUSY: 1 ("queue full"))'
    assert entry["no_language_model"] is False
    assert answers_not_available([busy, AnswerRecord(1, "eval-detect/2", "detect")]) is None


def test_log_time_rate_counts_intervals():
    assert log_time_rate([3_000_000_000, 1_000_000_000, 2_000_000_000]) == {"count": 3, "span_s": 2.0, "per_s": 1.0}
    assert log_time_rate([5])["per_s"] is None and log_time_rate([])["count"] == 0


def test_per_class_plot_draws_zero_and_not_measured_distinctly():
    pytest.importorskip("matplotlib", reason="plots need the [sample] extra (matplotlib)")
    names = ["cup", "tower", "bird"]
    figure = per_class_figure(names, {"precision": [0.5, None, 0.0], "recall": [1.0, 0.0, None]}, "P/R")
    axes = figure.axes[0]
    width = 0.8 / 2
    precision_x, recall_x = [i - width / 2 for i in range(3)], [i + width / 2 for i in range(3)]
    markers = [line for line in axes.get_lines() if line.get_marker() == "D"]
    zero_points = sorted(
        (round(float(x), 6), float(y)) for line in markers for x, y in zip(*line.get_data(), strict=True)
    )
    assert zero_points == [(round(recall_x[1], 6), 0.0), (round(precision_x[2], 6), 0.0)]
    assert all(not line.get_clip_on() for line in markers)  # not hidden under the axis
    labels = sorted((t.get_text(), round(t.get_position()[0], 6)) for t in axes.texts)
    assert labels == sorted(
        [
            (ZERO_LABEL, round(recall_x[1], 6)),
            (ZERO_LABEL, round(precision_x[2], 6)),
            (UNMEASURED_LABEL, round(precision_x[1], 6)),
            (UNMEASURED_LABEL, round(recall_x[2], 6)),
        ]
    )
    heights = [patch.get_height() for patch in axes.patches]
    assert heights == [0.5, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_cli_eval_on_sqlite_bag_with_gt_topic(sample, tmp_path):
    bag = make_sample_bag(tmp_path / "bag", "sqlite3", with_ground_truth_topic=True)
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--bag",
            str(bag),
            "--gt-topic",
            "/chatrex/ground_truth",
            "--out",
            str(out),
            "--max-frames",
            "2",
            "--no-progress",
            "--quiet",
            "--no-plots",
        ]
    )
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["inputs"]["storage"] == "sqlite3" and report["inputs"]["frames_evaluated"] == 2
    assert report["metrics"]["proposals"]["frames"] == 2
    assert not (out / "recall_vs_k.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image-topic", "/nope"], "no topic '/nope'"),
        (["--stamp-tolerance-ms", "-1"], "--stamp-tolerance-ms must be >= 0"),
        (["--proposal-backend", "magic"], "backend must be one of"),
        (["--model-path", "/x"], "the language backend is 'none'"),
        (["--proposal-param", "long_side"], "expected KEY=VALUE"),
    ],
)
def test_cli_eval_bad_input_exits_2_with_a_message(sample, tmp_path, capsys, extra, message):
    code = main(
        [
            "eval",
            "--bag",
            str(sample["bag"]),
            "--gt",
            str(sample_annotations_path()),
            "--out",
            str(tmp_path),
            "--no-progress",
            "--quiet",
            *extra,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_ground_truth_stamps_matching_nothing_is_a_clear_error(sample, tmp_path):
    data = json.loads(sample_annotations_path().read_text())
    for image in data["images"]:
        image["stamp_ns"] += 3_000_000_000
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(data))
    pipeline = ProposalPipeline(TruthProposalsTestDouble(sample["gt"]))
    with pytest.raises(ValueError, match="no ground-truth stamp matches an image stamp"):
        evaluate_bag(sample["bag"], GroundTruth.load(shifted), pipeline, progress=False)
    # stamps a little off (2 ms) match within a tolerance, and the records carry the ground-truth stamps
    for image in data["images"]:
        image["stamp_ns"] -= 3_000_000_000 - 2_000_000
    shifted.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no ground-truth stamp matches"):
        evaluate_bag(sample["bag"], GroundTruth.load(shifted), pipeline, progress=False)
    tolerant = evaluate_bag(
        sample["bag"], GroundTruth.load(shifted), pipeline, progress=False, stamp_tolerance_ns=5_000_000
    )
    assert tolerant.inputs["frames_evaluated"] == len(sample["gt"])
    assert tolerant.metrics["proposals"]["recall"]["100"]["iou_0.5"] == 1.0


def test_ground_truth_with_wrong_image_size_is_refused(sample, tmp_path):
    data = json.loads(sample_annotations_path().read_text())
    data["images"][0]["width"] = 640
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="is 640x512 but the bag image"):
        evaluate_bag(
            sample["bag"],
            GroundTruth.load(wrong),
            ProposalPipeline(TruthProposalsTestDouble(sample["gt"])),
            progress=False,
        )


def test_cli_make_sample_and_errors(tmp_path, capsys):
    assert main(["make-sample", "--out", str(tmp_path / "s"), "--storage", "sqlite3"]) == 0
    with BagReader(tmp_path / "s") as reader:
        assert reader.storage == "sqlite3"
    assert main(["make-sample", "--out", str(tmp_path / "s")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["eval", "--gt", str(sample_annotations_path())]) == 2
    assert "give --bag BAG" in capsys.readouterr().err


def test_recorded_bag_without_answers_is_named(tmp_path, sample):
    with BagWriter(tmp_path / "bag") as writer:
        writer.write_image(SAMPLE_IMAGE_TOPIC, np.zeros((4, 4, 3), np.uint8), 1, "cam")
    with pytest.raises(BagError, match="no chatrex_ros/msg/Answer topic"):
        evaluate_recorded(tmp_path / "bag", sample["gt"])


def test_eval_with_an_untrusted_chatrex_checkpoint_fails_in_one_line(sample, tmp_path, capsys) -> None:
    """The README's eval-with-a-model command without trust_remote_code: the fix in one line, no traceback."""
    from fixtures.tiny_chatrex import make_tiny_chatrex

    checkpoint = make_tiny_chatrex(tmp_path / "chatrex")
    code = main(
        [
            "eval",
            "--bag",
            str(sample["bag"]),
            "--gt",
            str(sample_annotations_path()),
            "--language-backend",
            "chatrex",
            "--model-path",
            str(checkpoint),
            "--language-param",
            "device=cpu",
            "--out",
            str(tmp_path / "out"),
            "--no-plots",
            "--quiet",
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code != 0
    assert "--language-param trust_remote_code=true" in error and "Traceback" not in error
    assert len(error.splitlines()) == 1
