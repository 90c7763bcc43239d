"""Metrics of the field: P/R over IoU 0.5:0.95, DensityF1 (HumanRef), rejection of negative queries, counting.

Hand-computed cases for each pure function, the scoring of records, the parsing of negative queries, and one
run of the real `chatrex-ros eval` on the sample bag with model doubles whose errors are known.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from doubles.sample_oracle import SampleOracle, SampleTruthProposer

from chatrex_ros.cli import main
from chatrex_ros.core.answering import AnswerStatus, QueryError, answer_query
from chatrex_ros.core.protocol import Task
from chatrex_ros.core.types import Detection
from chatrex_ros.eval import metrics as m
from chatrex_ros.eval.groundtruth import (
    GroundTruth,
    GroundTruthImage,
    GroundTruthObject,
    ReferringQuery,
    load_queries,
    parse_queries,
)
from chatrex_ros.eval.records import (
    AnswerRecord,
    count_query_id,
    detection_query_id,
    evaluation_requests,
    referring_query_id,
)
from chatrex_ros.eval.report import render_markdown
from chatrex_ros.eval.sample import load_sample_image, make_sample_bag, sample_annotations_path, sample_queries_path
from chatrex_ros.eval.scoring import score_answers
from chatrex_ros.models.base import ProposalPipeline

BOX = [0.0, 0.0, 100.0, 100.0]
BOX_72 = [0.0, 0.0, 100.0, 72.0]  # IoU 0.72 with BOX: a match at 0.5, 0.55, 0.6, 0.65, 0.7 only
FAR = [[200.0 + 20 * i, 200.0, 210.0 + 20 * i, 210.0] for i in range(3)]  # overlap nothing


def frame(gt_labels, gt_boxes, labels, boxes):
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    scores = np.linspace(0.9, 0.5, len(boxes))
    return m.FrameDetections(gt_labels, np.asarray(gt_boxes, dtype=float).reshape(-1, 4), labels, boxes, scores)


# --- P/R over IoU 0.5:0.95 ------------------------------------------------------------------------
def test_thresholds_are_cocos_ten():
    assert len(m.IOU_THRESHOLDS) == 10 and m.IOU_THRESHOLDS[0] == 0.5 and m.IOU_THRESHOLDS[-1] == pytest.approx(0.95)


def test_precision_recall_over_thresholds_hand_computed():
    gt_boxes = [BOX, [300, 300, 400, 400], [500, 0, 600, 50]]
    frames = [frame(["cup", "dog", "cat"], gt_boxes, ["cup", "dog"], [BOX_72, [300, 300, 400, 400]])]
    per_threshold = m.count_matches_by_threshold(frames)
    assert len(per_threshold) == 10
    assert [c["cup"].true_positives for c in per_threshold] == [1] * 5 + [0] * 5
    assert per_threshold[0] == m.count_matches(frames, 0.5)  # the IoU 0.5 numbers are the existing ones
    per_class = m.class_precision_recall_over_thresholds(per_threshold)
    assert per_class["cup"] == (0.5, 0.5)  # 5 of 10 thresholds
    assert per_class["dog"] == (1.0, 1.0)
    assert per_class["cat"] == (None, 0.0)  # never predicted: no precision, recall 0
    precision, recall = m.mean_precision_recall_over_thresholds(per_threshold)
    assert precision == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # a never-predicted class counts 0, as at IoU 0.5
    assert recall == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m.mean_precision_recall_over_thresholds(m.count_matches_by_threshold([])) == (None, None)


# --- DensityF1 ------------------------------------------------------------------------------------
def test_density_f1_exact_answer_scores_one():
    truths = [BOX, [300, 300, 400, 400]]
    assert m.density_f1(truths, truths).tolist() == [1.0] * 10


def test_density_f1_penalises_extra_boxes():
    # one target, four boxes, one right: P 1/4, R 1, F1 0.4, penalty min(1, 1/4): 0.1 at every threshold
    scores = m.density_f1([BOX], [BOX, *FAR])
    np.testing.assert_allclose(scores, [0.1] * 10)
    # without the penalty the same answer would score F1 0.4: the penalty is what punishes "box everything"
    assert scores[0] < 0.4


def test_density_f1_over_thresholds_and_degenerate_cases():
    scores = m.density_f1([BOX], [BOX_72])
    assert scores.tolist() == [1.0] * 5 + [0.0] * 5 and scores.mean() == 0.5
    # fewer boxes than targets: no penalty (min(1, 2/1)), F1 of P 1 and R 1/2 = 2/3
    assert m.density_f1([BOX, [300, 300, 400, 400]], [BOX])[0] == pytest.approx(2 / 3)
    assert m.density_f1([BOX], np.zeros((0, 4))).tolist() == [0.0] * 10
    with pytest.raises(ValueError, match="rejection case"):
        m.density_f1(np.zeros((0, 4)), [BOX])


def test_humanref_matching_lets_the_ground_truth_lead():
    # ground-truth box 0 takes prediction 0 (0.7 beats 0.6); box 1 then has nothing left. COCO matching
    # (predictions lead) pairs prediction 0 with box 1 (0.9) and prediction 1 with box 0: two matches.
    ious = np.array([[0.7, 0.9], [0.6, 0.0]])
    assert m.humanref_match_count(ious, 0.5) == 1
    assert np.count_nonzero(m.greedy_match(ious, 0.5) >= 0) == 2
    # a tie goes to the earlier prediction (so box 1 finds none), the threshold is inclusive
    assert m.humanref_match_count(np.array([[0.8, 0.8], [0.8, 0.0]]), 0.5) == 1
    assert m.humanref_match_count(np.array([[0.5]]), 0.5) == 1
    assert m.humanref_match_count(np.zeros((0, 3)), 0.5) == 0


def test_density_f1_by_class_averages_over_frames_with_that_class():
    frames = [
        frame(["cup"], [BOX], ["cup"], [BOX]),  # exact: 1
        frame(["cup", "dog"], [BOX, [300, 300, 400, 400]], ["cup", "cup", "cat"], [BOX, FAR[0], FAR[1]]),
        frame([], [], ["cup"], [BOX]),  # no ground truth: no expression, no row
    ]
    per_class = m.density_f1_by_class(frames)
    assert list(per_class) == ["cup", "dog"]  # "cat" was only predicted: it is no expression
    assert per_class["cup"].shape == (2, 10)
    # second frame's cup: P 1/2, R 1, F1 2/3, penalty 1/2 -> 1/3
    np.testing.assert_allclose(per_class["cup"].mean(axis=0), [(1 + 1 / 3) / 2] * 10)
    assert per_class["dog"].tolist() == [[0.0] * 10]  # never answered


# --- rejection and counting -----------------------------------------------------------------------
def test_rejection_summary_hand_computed():
    summary = m.rejection_summary([0, 2, None, 0])
    assert (summary.queries, summary.answered, summary.correct, summary.false_positives) == (4, 3, 2, 2)
    assert summary.accuracy == 0.5  # the unanswered query is no rejection
    assert summary.false_positives_per_query == pytest.approx(2 / 3)  # over the three answered
    empty = m.rejection_summary([])
    assert empty.accuracy is None and empty.false_positives_per_query is None
    assert m.rejection_summary([None]).accuracy == 0.0  # a model that fails everything rejects nothing
    with pytest.raises(ValueError):
        m.rejection_summary([-1])


def test_count_summary_hand_computed():
    summary = m.count_summary([(4, 3), (1, 1), (2, None)])
    assert (summary.queries, summary.answered, summary.exact, summary.absolute_error) == (3, 2, 1, 1)
    assert summary.accuracy == pytest.approx(1 / 3) and summary.mean_absolute_error == 0.5
    assert m.count_summary([]).accuracy is None and m.count_summary([]).mean_absolute_error is None


# --- negative queries: parsing --------------------------------------------------------------------
def small_truth():
    images = [GroundTruthImage(1, 1_000, 100, 100), GroundTruthImage(2, 2_000, 100, 100)]
    objects = [
        GroundTruthObject(1, 1, "cup", (0.0, 0.0, 10.0, 10.0)),
        GroundTruthObject(2, 1, "dog", (50.0, 50.0, 90.0, 90.0)),
        GroundTruthObject(3, 2, "cup", (20.0, 20.0, 40.0, 40.0)),
        GroundTruthObject(4, 2, "cup", (60.0, 60.0, 80.0, 80.0)),
    ]
    return GroundTruth(images, objects, "small")


def test_negative_queries_parse():
    gt = small_truth()
    queries = parse_queries(
        {
            "queries": [
                {"id": "q", "image_id": 1, "phrase": "the dog", "annotation_id": 2},
                {"id": "n", "image_id": 2, "phrase": "a giraffe", "negative": True},
                {"id": "p", "image_id": 1, "phrase": "the cup", "annotation_id": 1, "negative": False},
            ]
        },
        gt,
    )
    assert [(q.id, q.negative, q.annotation_id) for q in queries] == [
        ("q", False, 2),
        ("n", True, None),
        ("p", False, 1),
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "n", "image_id": 1, "phrase": "x", "negative": True, "annotation_id": 1}, "has an annotation_id"),
        ({"id": "n", "image_id": 1, "phrase": "x", "negative": "yes"}, "expected true or false"),
        ({"id": "p", "image_id": 1, "phrase": "x"}, "needs image_id, phrase and annotation_id"),
        ({"id": "n", "image_id": 1, "negative": True}, "needs image_id and phrase"),
        ({"id": "n", "image_id": 1, "phrase": " Dog ", "negative": True}, "a category annotated in image 1"),
        ({"id": "n", "image_id": 7, "phrase": "x", "negative": True}, "no image with id 7"),
    ],
)
def test_bad_negative_queries_are_refused(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_queries({"queries": [entry]}, small_truth())


def test_referring_query_needs_exactly_one_of_target_and_negative():
    with pytest.raises(ValueError, match="negative query has no annotation_id"):
        ReferringQuery("q", 1, "x", None)
    with pytest.raises(ValueError, match="negative query has no annotation_id"):
        ReferringQuery("q", 1, "x", 3, negative=True)


def test_negative_and_count_queries_are_asked():
    gt = small_truth()
    queries = [ReferringQuery("q", 1, "the dog", 2), ReferringQuery("n", 1, "a giraffe", None, negative=True)]
    default = evaluation_requests(gt, 1, queries)
    assert [query_id for query_id, _ in default] == [detection_query_id(1), "eval-refer/q", "eval-refer/n"]
    assert default[2][1].task is Task.DETECT and default[2][1].targets == ("a giraffe",)
    with_counts = evaluation_requests(gt, 1, queries, counts=True)
    assert with_counts[:3] == default
    assert [query_id for query_id, _ in with_counts[3:]] == ["eval-count/1/cup", "eval-count/1/dog"]
    assert with_counts[3][1].task is Task.COUNT and with_counts[3][1].prompt.startswith("How many cup are there")


# --- scoring records ------------------------------------------------------------------------------
def detection(label, box, score=0.9, index=0):
    x1, y1, x2, y2 = (float(v) for v in box)
    return Detection(index, label, (x1, y1, x2, y2), score)


def positive_answers():
    return [
        AnswerRecord(1_000, detection_query_id(1), "detect", detections=(detection("cup", (0, 0, 10, 10)),)),
        AnswerRecord(
            1_000,
            referring_query_id("q"),
            "detect",
            detections=(detection("the dog", (50, 50, 90, 90), index=1), detection("the dog", (0, 0, 10, 10))),
        ),
    ]


def test_negatives_are_scored_apart_and_leave_positives_unchanged():
    gt = small_truth()
    positive = [ReferringQuery("q", 1, "the dog", 2)]
    negative = [
        ReferringQuery("n1", 1, "a giraffe", None, negative=True),  # answered with no box: rejected
        ReferringQuery("n2", 2, "a horse", None, negative=True),  # answered with two boxes
        ReferringQuery("n3", 2, "a zebra", None, negative=True),  # failed: no rejection, no boxes counted
        ReferringQuery("n4", 2, "a cow", None, negative=True),  # never answered
    ]
    negative_answers = [
        AnswerRecord(1_000, referring_query_id("n1"), "detect"),
        AnswerRecord(
            2_000,
            referring_query_id("n2"),
            "detect",
            detections=(detection("a horse", (20, 20, 40, 40), index=0), detection("a horse", (1, 1, 5, 5), index=3)),
        ),
        AnswerRecord(2_000, referring_query_id("n3"), "detect", status=int(AnswerStatus.TIMEOUT)),
    ]
    alone = score_answers(positive_answers(), gt, positive)
    mixed = score_answers(positive_answers() + negative_answers, gt, positive + negative)
    without = {k: v for k, v in mixed["referring"].items() if k != "negatives"}
    assert without == {k: v for k, v in alone["referring"].items() if k != "negatives"}
    assert mixed["detection"] == alone["detection"]
    assert mixed["answers_with_unknown_query_id"] == 0
    assert mixed["referring"]["negatives"] == {
        "queries": 4,
        "answered": 2,
        "unanswered": 2,
        "correct_rejections": 1,
        "rejection_accuracy": 0.25,
        "false_positives": 2,
        "false_positives_per_query": 1.0,
        "per_query": {"n1": True, "n2": False, "n3": False, "n4": False},
    }
    assert alone["referring"]["negatives"]["queries"] == 0
    assert alone["referring"]["negatives"]["rejection_accuracy"] is None
    # the positive query: first box right (a hit); two boxes for one target: DensityF1 = F1(1/2, 1) * 1/2 = 1/3
    assert alone["referring"]["hits"] == 1
    assert alone["referring"]["densityf1_iou_0.5"] == pytest.approx(1 / 3, abs=1e-6)
    markdown = render_markdown(_report(mixed))
    assert "rejection accuracy 25.0" in markdown and "1.00 false-positive boxes" in markdown


def test_detection_reports_threshold_averaged_pr_and_density_f1():
    gt = small_truth()
    answers = [
        AnswerRecord(1_000, detection_query_id(1), "detect", detections=(detection("cup", (0, 0, 10, 10)),)),
        AnswerRecord(
            2_000,
            detection_query_id(2),
            "detect",
            detections=(
                detection("cup", (20, 20, 40, 40), index=0),
                detection("cup", (60, 60, 80, 80), index=1),
                detection("cup", (1, 1, 5, 5), index=2),
            ),
        ),
    ]
    scored = score_answers(answers, gt)["detection"]
    # cup: 3 of 4 boxes right at every threshold, all 3 found; dog never answered
    assert scored["per_class_iou_0.5:0.95"] == {
        "cup": {"precision": 0.75, "recall": 1.0},
        "dog": {"precision": None, "recall": 0.0},
    }
    assert scored["precision_iou_0.5:0.95"] == pytest.approx(0.375) and scored["recall_iou_0.5:0.95"] == 0.5
    # cup: frame 1 exact (1); frame 2 P 2/3, R 1, F1 0.8, penalty 2/3 -> 8/15; dog: 0
    cup = (1 + 8 / 15) / 2
    assert scored["per_class_densityf1"]["cup"] == {
        "frames": 2,
        "densityf1_iou_0.5": pytest.approx(cup, abs=1e-6),
        "densityf1_iou_0.5:0.95": pytest.approx(cup, abs=1e-6),
    }
    assert scored["densityf1_iou_0.5:0.95"] == pytest.approx(cup / 2, abs=1e-6)
    assert scored["precision_iou_0.5"] == pytest.approx(0.375) and scored["per_class"]["cup"]["tp"] == 3  # as before


def test_count_answers_are_scored_when_asked():
    gt = small_truth()

    def count(image_id, stamp, category, indices, status=AnswerStatus.OK):
        detections = tuple(detection(category, (0, 0, 10, 10), index=i) for i in indices)
        return AnswerRecord(stamp, count_query_id(image_id, category), "count", int(status), detections)

    answers = [
        count(1, 1_000, "cup", [0]),  # 1 of 1: exact
        count(1, 1_000, "dog", [2, 2, 3]),  # the same proposal twice is one object: 2 for 1
        count(2, 2_000, "cup", [], AnswerStatus.MODEL_ERROR),  # 2 cups, not answered
    ]
    scored = score_answers(answers, gt)["count"]
    assert scored == {
        "queries": 3,
        "exact": 1,
        "accuracy": pytest.approx(1 / 3, abs=1e-6),
        "mean_absolute_error": 0.5,
        "answered": 2,
        "unanswered": 1,
        "per_class": {
            "cup": {"queries": 2, "exact": 1, "accuracy": 0.5, "mean_absolute_error": 0.0},
            "dog": {"queries": 1, "exact": 0, "accuracy": 0.0, "mean_absolute_error": 1.0},
        },
    }
    assert score_answers(answers, gt)["answers_with_unknown_query_id"] == 0
    assert score_answers(positive_answers(), gt)["count"] is None  # none asked: not reported as all wrong
    assert score_answers(answers, gt, counts=False)["count"] is None
    assert score_answers([], gt, counts=True)["count"]["unanswered"] == 3
    assert "## Counting" in render_markdown(_report(score_answers(answers, gt)))


def _report(answers):
    return {
        "inputs": {"mode": "recorded", "answers_bag": "x", "ground_truth": "g", "frames_evaluated": 2},
        "metrics": {"answers": answers},
        "timing": {"stages_ms": {}},
    }


# --- the sample bag end to end --------------------------------------------------------------------
NEGATIVES = [
    {"id": "neg-giraffe", "image_id": 1, "phrase": "giraffe", "negative": True},  # the oracle answers no box
    {"id": "neg-unicorn", "image_id": 2, "phrase": "unicorn", "negative": True},  # ... and two boxes
]


def test_cli_eval_on_the_sample_bag_reports_the_field_metrics(tmp_path):
    bag = make_sample_bag(tmp_path / "bag")
    queries = json.loads(sample_queries_path().read_text())
    queries["queries"] += NEGATIVES
    queries_file = tmp_path / "queries.json"
    queries_file.write_text(json.dumps(queries))
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--bag",
            str(bag),
            "--gt",
            str(sample_annotations_path()),
            "--queries",
            str(queries_file),
            "--proposal-backend",
            "python:doubles.sample_oracle:SampleTruthProposer",
            "--language-backend",
            "python:doubles.sample_oracle:SampleOracle",
            "--out",
            str(out),
            "--no-progress",
            "--quiet",
            "--no-plots",
        ]
    )
    assert code == 0
    answers = json.loads((out / "metrics.json").read_text())["metrics"]["answers"]
    classes = len(GroundTruth.load(sample_annotations_path()).categories)
    detection = answers["detection"]
    # every class exact except cup: its one object plus a distractor (P 1/2, DensityF1 F1 2/3 * 1/2 = 1/3)
    assert detection["precision_iou_0.5"] == pytest.approx((classes - 0.5) / classes, abs=1e-6)
    assert detection["precision_iou_0.5:0.95"] == pytest.approx((classes - 0.5) / classes, abs=1e-6)
    assert detection["recall_iou_0.5:0.95"] == 1.0
    assert detection["per_class_iou_0.5:0.95"]["cup"] == {"precision": 0.5, "recall": 1.0}
    assert detection["per_class_densityf1"]["cup"]["densityf1_iou_0.5:0.95"] == pytest.approx(1 / 3, abs=1e-6)
    assert detection["per_class_densityf1"]["person"] == {
        "frames": 2,
        "densityf1_iou_0.5": 1.0,
        "densityf1_iou_0.5:0.95": 1.0,
    }
    assert detection["densityf1_iou_0.5:0.95"] == pytest.approx((classes - 1 + 1 / 3) / classes, abs=1e-6)
    referring = answers["referring"]
    positives = len(queries["queries"]) - len(NEGATIVES)
    assert (referring["queries"], referring["hits"], referring["accuracy_iou_0.5"]) == (positives, positives, 1.0)
    assert referring["densityf1_iou_0.5:0.95"] == 1.0
    assert set(referring["per_query"]) == {q["id"] for q in queries["queries"][:positives]}
    assert referring["negatives"] == {
        "queries": 2,
        "answered": 2,
        "unanswered": 0,
        "correct_rejections": 1,
        "rejection_accuracy": 0.5,
        "false_positives": 2,
        "false_positives_per_query": 1.0,
        "per_query": {"neg-giraffe": True, "neg-unicorn": False},
    }
    assert answers["count"] is None  # the default evaluation asks no count queries
    assert answers["status_counts"] == {"OK": 6 + len(queries["queries"])}
    markdown = (out / "report.md").read_text()
    assert "rejection accuracy 50.0 (1 of 2 answered with no box" in markdown
    assert "| cup | 50.0 | 100.0 | 1 | 33.3 | 33.3 |" in markdown


def test_count_queries_on_the_sample_frames_through_the_core():
    """What the offline run does with counts on: ask evaluation_requests(counts=True), answer, score."""
    gt = GroundTruth.load(sample_annotations_path())
    pipeline, language = ProposalPipeline(SampleTruthProposer()), SampleOracle()
    queries = load_queries(sample_queries_path(), gt)
    records = []
    for image in gt.images:
        rgb = load_sample_image(image)
        proposals = pipeline.run(rgb)
        for query_id, request in evaluation_requests(gt, image.id, queries, counts=True):
            try:
                answer = answer_query(language, rgb, proposals, request)
                records.append(
                    AnswerRecord.from_result(image.stamp_ns, query_id, request.task.value, answer, len(proposals))
                )
            except QueryError as error:  # pragma: no cover - the doubles answer everything
                records.append(AnswerRecord.from_error(image.stamp_ns, query_id, request.task.value, error, 0))
    count = score_answers(records, gt, queries)["count"]
    asked = sum(len(gt.frame_categories(image.id)) for image in gt.images)
    # every count exact but tower's (4 instances, 3 boxes)
    assert (count["queries"], count["exact"], count["unanswered"]) == (asked, asked - 1, 0)
    assert count["accuracy"] == pytest.approx((asked - 1) / asked, abs=1e-6)
    assert count["mean_absolute_error"] == pytest.approx(1 / asked, abs=1e-6)
    assert count["per_class"]["tower"] == {"queries": 1, "exact": 0, "accuracy": 0.0, "mean_absolute_error": 1.0}
    assert count["per_class"]["person"]["queries"] == 2
    assert any(p.startswith("How many tower are there in this image?") for p in language.prompts)


@pytest.mark.parametrize("workers", [None, "2"])
def test_cli_count_queries_are_asked_and_scored(tmp_path, workers):
    """`eval --count-queries` (one bag in this process, or a folder of bags in worker processes)."""
    bags = tmp_path / "bags"
    make_sample_bag(bags / "a")
    (bags / "a_annotations.json").write_text(sample_annotations_path().read_text())
    target = ["--bag", str(bags)] + (["--workers", workers] if workers else [])
    if workers is None:
        target = ["--bag", str(bags / "a"), "--gt", str(sample_annotations_path())]
    out = tmp_path / "out"
    doubles = ["--proposal-backend", "python:doubles.sample_oracle:SampleTruthProposer"]
    doubles += ["--language-backend", "python:doubles.sample_oracle:SampleOracle"]
    assert (
        main(
            ["eval", *target, *doubles, "--count-queries", "--out", str(out), "--no-progress", "--quiet", "--no-plots"]
        )
        == 0
    )
    count = json.loads((out / "metrics.json").read_text())["metrics"]["answers"]["count"]
    assert count["queries"] == 19 and count["exact"] == 18  # the oracle miscounts "tower" by one
    assert count["mean_absolute_error"] == pytest.approx(1 / 19, abs=1e-6)  # rounded in metrics.json
    out_plain = tmp_path / "plain"
    assert main(["eval", *target, *doubles, "--out", str(out_plain), "--no-progress", "--quiet", "--no-plots"]) == 0
    assert json.loads((out_plain / "metrics.json").read_text())["metrics"]["answers"]["count"] is None
