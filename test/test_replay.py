"""Online replay (`chatrex-ros replay`): planning, the replay clock, bookkeeping, and end to end over DDS.

The DDS tests run the real proposal_node (selective search) and language_node in namespace /chatrex with
a scripted TEST DOUBLE of the language model (test/doubles), replay the sample bag into them with the
real command in its own process, then score the recording with `chatrex-ros eval --answers`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatrex_ros.cli import main as cli_main
from chatrex_ros.core.answering import AnswerStatus, QueryRequest
from chatrex_ros.eval.bagio import BagReader
from chatrex_ros.eval.groundtruth import GroundTruth, load_queries
from chatrex_ros.eval.records import evaluation_requests
from chatrex_ros.eval.sample import SAMPLE_IMAGE_TOPIC, make_sample_bag, sample_annotations_path, sample_queries_path
from chatrex_ros.replay.clock import ReplayClock
from chatrex_ros.replay.options import ReplayError, ReplayOptions
from chatrex_ros.replay.plan import ReplayFrame, ReplayPlan, plan_replay
from chatrex_ros.replay.progress import ReplayProgress

S = 1_000_000_000
SLOW_WORD = "slowthing"
MODEL_SLEEP_S = 0.5
SCRIPT = {  # every detect prompt gets the same grounded answer; the --ask phrase makes generation slow
    "answers_by_word": {"detect": "<ground>cat</ground><objects><obj0><obj1></objects>"},
    "sleep_by_word": {SLOW_WORD: MODEL_SLEEP_S},
}


@pytest.fixture(scope="module")
def sample_bag(tmp_path_factory) -> Path:
    return make_sample_bag(tmp_path_factory.mktemp("replay") / "sample_bag")


@pytest.fixture(scope="module")
def gt() -> GroundTruth:
    return GroundTruth.load(sample_annotations_path())


# --- planning ---------------------------------------------------------------------------------------
def test_plan_asks_the_evaluation_queries_of_each_frame_about_that_frame(sample_bag, gt) -> None:
    referring = load_queries(sample_queries_path(), gt)
    plan = plan_replay(sample_bag, gt=gt, referring=referring)
    assert plan.image_topic == SAMPLE_IMAGE_TOPIC and plan.image_type == "sensor_msgs/msg/Image"
    assert [frame.stamp_ns for frame in plan.frames] == [image.stamp_ns for image in gt.images]
    for frame, image in zip(plan.frames, gt.images, strict=True):
        expected = [query_id for query_id, _ in evaluation_requests(gt, image.id, referring)]
        assert [query_id for query_id, _ in frame.queries] == expected
    assert plan.query_count == len(gt.images) + len(referring)


def test_plan_with_ask_and_max_frames(sample_bag) -> None:
    plan = plan_replay(sample_bag, ask="cup; the red mug", max_frames=2)
    assert len(plan.frames) == 2
    assert [[q for q, _ in frame.queries] for frame in plan.frames] == [["replay-ask/0"], ["replay-ask/1"]]
    assert plan.frames[0].queries[0][1].targets == ("cup", "the red mug")


def test_plan_matches_ground_truth_within_the_stamp_tolerance_only(sample_bag) -> None:
    coco = json.loads(sample_annotations_path().read_text())
    for image in coco["images"]:
        image["stamp_ns"] += 3_000_000  # annotated 3 ms off the image stamps
    shifted = GroundTruth.from_coco(coco)
    with pytest.raises(ValueError, match="no ground-truth stamp matches"):
        plan_replay(sample_bag, gt=shifted)
    plan = plan_replay(sample_bag, gt=shifted, stamp_tolerance_ns=5_000_000)
    assert all(len(frame.queries) == 1 for frame in plan.frames)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"image_topic": "/camera/missing"}, "has no topic '/camera/missing'.*/camera/image_raw"),
        ({"max_frames": 0}, "--max-frames must be >= 1"),
        ({"ask": ";"}, "--ask"),
    ],
)
def test_plan_rejects_bad_input_with_a_clear_message(sample_bag, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        plan_replay(sample_bag, **kwargs)


def test_referring_queries_without_ground_truth_are_refused(sample_bag, gt) -> None:
    with pytest.raises(ReplayError, match="--gt"):
        plan_replay(sample_bag, referring=load_queries(sample_queries_path(), gt))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rate": 0.0}, "--rate"),
        ({"rate": float("nan")}, "--rate"),
        ({"frame_timeout_s": 0.0}, "--frame-timeout"),
        ({"namespace": "chatrex"}, "absolute"),
        ({"storage": "rosbag1"}, "storage"),
        ({"wait_s": -1.0}, "--wait"),
        ({"delay_s": float("inf")}, "--delay"),
    ],
)
def test_options_reject_bad_values(kwargs, message) -> None:
    with pytest.raises(ReplayError, match=message):
        ReplayOptions(**kwargs).validate()


def test_options_refuse_to_overwrite_a_recording(tmp_path) -> None:
    with pytest.raises(ReplayError, match="already exists"):
        ReplayOptions(record=tmp_path).validate()


# --- the replay clock -------------------------------------------------------------------------------
def test_clock_runs_at_the_rate_and_schedules_frames_by_it() -> None:
    clock = ReplayClock(2.0, bag_start_ns=100 * S, wall_start_ns=5 * S)
    assert clock.now(5 * S) == 100 * S
    assert clock.now(6 * S) == 102 * S  # twice as fast as the wall
    assert clock.wall_at(101 * S) == 5 * S + S // 2
    assert clock.now(4 * S) == 100 * S  # before the start it does not run backwards


def test_held_clock_stops_and_resumes_without_jumping() -> None:
    clock = ReplayClock(1.0, bag_start_ns=0, wall_start_ns=0)
    clock.hold(S, wall_ns=0)  # step mode: wait at the next frame's time
    assert clock.now(3 * S) == S
    clock.release(wall_ns=3 * S)  # the slow frame finally answered
    assert clock.now(3 * S) == S and clock.now(4 * S) == 2 * S
    assert clock.wall_at(2 * S) == 4 * S  # the schedule shifted by the wait


def test_hold_never_sends_the_clock_back() -> None:
    clock = ReplayClock(1.0, bag_start_ns=0, wall_start_ns=0)
    clock.hold(S, wall_ns=2 * S)  # already past the requested time
    assert clock.now(5 * S) == 2 * S


# --- bookkeeping ------------------------------------------------------------------------------------
def _progress() -> ReplayProgress:
    request = QueryRequest.create("detect", text="cup")
    return ReplayProgress(
        [ReplayFrame(0, 10 * S, 10 * S, (("q0", request),)), ReplayFrame(1, 11 * S, 11 * S, (("q1", request),))]
    )


def test_recording_time_is_the_stamp_plus_the_wall_time_since_publication() -> None:
    progress = _progress()
    progress.published(0, wall_ns=500 * S)
    progress.query_sent(0, "q0", wall_ns=500 * S + 1_000)
    assert progress.recording_time_ns(10 * S, 500 * S + 250_000_000) == 10 * S + 250_000_000
    # an error answer with an empty header is placed by its query id
    assert progress.recording_time_ns(0, 500 * S + 3 * S, query_id="q0") == 13 * S
    assert progress.recording_time_ns(11 * S, 501 * S) is None  # not published yet
    assert progress.recording_time_ns(99 * S, 501 * S) is None  # not ours


def test_report_counts_drops_missing_and_failed_answers_and_latency() -> None:
    progress = _progress()
    progress.published(0, wall_ns=100 * S)
    progress.published(1, wall_ns=101 * S)
    progress.query_sent(0, "q0", 100 * S)
    progress.query_sent(1, "q1", 101 * S)
    assert progress.proposals_received(10 * S, 7, wall_ns=100 * S + 40_000_000) is progress.frames[0]
    progress.answer_received("q0", 10 * S, int(AnswerStatus.OK), wall_ns=100 * S + 90_000_000)
    progress.answer_received("q0", 10 * S, int(AnswerStatus.BUSY), wall_ns=100 * S + 95_000_000)  # repeat: ignored
    progress.answer_received("other", 77, int(AnswerStatus.OK), wall_ns=0)
    progress.proposals_received(77, 3, wall_ns=0)
    progress.timed_out(1, "proposals")
    plan = ReplayPlan(Path("bag"), "/image", "sensor_msgs/msg/Image", tuple(p.frame for p in progress.frames))
    report = progress.report(plan, ReplayOptions(step=True), wall_s=2.0, recorded={})
    assert report.frames_without_proposals == [1]
    assert report.frames_missing_answers == [1]
    assert report.frames_with_failed_answers == []
    assert report.answer_statuses == {"OK": 1}
    assert report.timeouts == [{"frame": 1, "stamp_ns": 11 * S, "missing": "proposals"}]
    assert report.foreign_messages == {"answers": 1, "proposals": 1}
    assert report.latency_ms["proposals"]["max"] == pytest.approx(40.0)
    assert report.latency_ms["answers"]["max"] == pytest.approx(90.0)
    assert not report.complete
    assert re.search(r"frames without proposals +1 \(frames 1\)", report.format_table())


# --- command-line errors ----------------------------------------------------------------------------
def test_cli_missing_topic_exits_2_naming_the_topics(sample_bag, capsys) -> None:
    code = cli_main(["replay", "--bag", str(sample_bag), "--image-topic", "/camera/nope", "--wait", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "/camera/nope" in err and "/camera/image_raw (sensor_msgs/msg/Image)" in err


def test_cli_corrupt_bag_exits_2(sample_bag, tmp_path, capsys) -> None:
    broken = tmp_path / "truncated"
    broken.mkdir()
    for source in sample_bag.iterdir():
        data = source.read_bytes()
        (broken / source.name).write_bytes(data[: len(data) // 2] if source.suffix == ".mcap" else data)
    code = cli_main(["replay", "--bag", str(broken), "--wait", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot open bag" in err and "corrupt" in err


def test_cli_missing_bag_and_bad_rate_exit_2(sample_bag, tmp_path, capsys) -> None:
    assert cli_main(["replay", "--bag", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["replay", "--bag", str(sample_bag), "--rate", "-1"]) == 2
    assert "--rate must be a positive number" in capsys.readouterr().err


# --- end to end over DDS ----------------------------------------------------------------------------
def _start_replay(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chatrex_ros", "replay", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _replay(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatrex_ros", "replay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


@pytest.mark.ros
def test_replay_without_listening_nodes_exits_2(sample_bag, tmp_path) -> None:
    result = _replay(
        "--bag",
        str(sample_bag),
        "--image-out",
        "/replay_test_nobody/image",
        "--namespace",
        "/replay_test_nobody",
        "--step",
        "--wait",
        "1",
        "--record",
        str(tmp_path / "rec"),
    )
    assert result.returncode == 2, result.stderr
    assert "no subscriber on /replay_test_nobody/image" in result.stderr
    assert not (tmp_path / "rec").exists(), "a replay that never started leaves no empty recording"


@pytest.fixture(scope="module")
def graph():
    from ros_harness import NodeProcess, wait_until

    common = {"image": SAMPLE_IMAGE_TOPIC}
    proposal = NodeProcess(
        "chatrex_ros.ros.proposal_node",
        "proposal_node",
        {"selective_search_long_side": 160},
        common,
        namespace="/chatrex",
    )
    language = NodeProcess(
        "chatrex_ros.ros.language_node",
        "language_node",
        {
            "language_backend": "python:doubles.scripted_model:ScriptedModel",
            "backend_options": json.dumps(SCRIPT),
            "queue_size": 1,  # step mode asks one query at a time, so even a one-slot queue never overflows
        },
        common,
        namespace="/chatrex",
    )
    try:
        started = lambda: "ready" in proposal.output() and "ready" in language.output()  # noqa: E731
        wait_until(lambda: started() or not (proposal.alive() and language.alive()), 60, "the nodes to start")
        assert proposal.alive(), proposal.output()
        assert language.alive(), language.output()
        yield proposal, language
    finally:
        assert language.stop() == 0, language.output()
        assert proposal.stop() == 0, proposal.output()


@pytest.mark.ros
def test_step_replay_records_every_frame_and_eval_scores_it(graph, sample_bag, gt, tmp_path) -> None:
    record, summary, out = tmp_path / "rec", tmp_path / "summary.json", tmp_path / "eval"
    annotations, queries = str(sample_annotations_path()), str(sample_queries_path())
    from ros_harness import RosClient, wait_until
    from rosgraph_msgs.msg import Clock

    listener = RosClient("replay_clock_listener")
    clock = listener.subscribe(Clock, "/clock", depth=1000)
    try:
        replay = _start_replay(
            "--bag",
            str(sample_bag),
            "--step",
            "--gt",
            annotations,
            "--queries",
            queries,
            "--record",
            str(record),
            "--summary-json",
            str(summary),
            "--wait",
            "30",
            "--frame-timeout",
            "30",
            "--delay",
            "4",
        )
        # The replay waits for its graph, not for /clock subscribers (none is required), and the sample bag
        # plays in under a second: --delay holds /clock at the first frame while this listener matches.
        wait_until(lambda: len(clock) > 0 or replay.poll() is not None, 60.0, "the replay's /clock")
        stdout, stderr = replay.communicate(timeout=120.0)
    except BaseException:
        replay.kill()
        raise
    finally:
        listener.close()
    assert replay.returncode == 0, stdout + stderr
    # /clock follows the bag's time, forward only, held at the next frame while the previous one is answered
    clock_ns = [m.clock.sec * S + m.clock.nanosec for m in clock]
    assert len(clock_ns) > 10 and clock_ns == sorted(clock_ns)
    assert gt.images[0].stamp_ns <= clock_ns[0]
    # the replay takes seconds of wall time, but the clock waited for the answers instead of running on
    assert gt.images[-1].stamp_ns <= clock_ns[-1] < gt.images[-1].stamp_ns + S // 4
    report = json.loads(summary.read_text())
    assert report["complete"] and report["frames_published"] == len(gt.images)
    assert report["answer_statuses"] == {"OK": report["queries_planned"]}

    bag_stamps = [image.stamp_ns for image in gt.images]
    with BagReader(record) as reader:
        assert reader.image_stamps(SAMPLE_IMAGE_TOPIC) == bag_stamps  # headers kept as recorded
        proposals = reader.proposals("/chatrex/proposals")
        answers = reader.answers("/chatrex/answer")
        assert reader.topics["/chatrex/query"].count == report["queries_planned"]
    assert sorted(p.stamp_ns for p in proposals) == bag_stamps  # one list per frame: nothing dropped
    assert all(len(p) > 0 for p in proposals)
    expected = {
        q: image.stamp_ns
        for image in gt.images
        for q, _ in evaluation_requests(gt, image.id, load_queries(queries, gt))
    }
    assert {a.query_id: a.stamp_ns for a in answers} == expected
    assert all(a.ok and a.detections for a in answers)
    # recorded on the stamp axis: log time - stamp is the wall latency from publication, not years
    assert all(0 < a.received_ns - a.stamp_ns < 30 * S for a in answers)

    evaluation = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatrex_ros",
            "eval",
            "--answers",
            str(record),
            "--gt",
            annotations,
            "--queries",
            queries,
            "--out",
            str(out),
            "--no-plots",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert evaluation.returncode == 0, evaluation.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["proposals"]["frames_without_proposals"] == []
    assert metrics["metrics"]["answers"]["detection"]["frames_answered"] == len(gt.images)
    assert metrics["metrics"]["answers"]["referring"]["unanswered"] == 0
    latency = metrics["timing"]["stages_ms"]["answers"]
    assert latency["count"] == len(answers)
    assert latency["max"] == pytest.approx(report["latency_ms"]["answers"]["max"], abs=0.01)


@pytest.mark.ros
def test_a_slow_model_drops_nothing_in_step_mode_but_is_reported_in_timed_mode(graph, sample_bag, tmp_path) -> None:
    reports = {}
    for mode in ("step", "timed"):
        summary = tmp_path / f"{mode}.json"
        record = tmp_path / f"{mode}_rec"
        # timed mode also records into sqlite3 (its connection is bound to one thread) without the images
        flags = (
            ["--step"]
            if mode == "step"
            else ["--rate", "1.0", "--drain", "20", "--storage", "sqlite3", "--no-record-images"]
        )
        result = _replay(
            "--bag",
            str(sample_bag),
            "--ask",
            SLOW_WORD,
            "--record",
            str(record),
            "--summary-json",
            str(summary),
            "--wait",
            "30",
            *flags,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        reports[mode] = json.loads(summary.read_text())
        with BagReader(record) as reader:
            statuses = {a.query_id: a.status for a in reader.answers("/chatrex/answer")}
            assert reader.storage == ("mcap" if mode == "step" else "sqlite3")
            assert (SAMPLE_IMAGE_TOPIC in reader.topics) == (mode == "step")
        failed_frames = sorted(int(q.split("/")[1]) for q, status in statuses.items() if status != AnswerStatus.OK)
        assert reports[mode]["frames_with_failed_answers"] == failed_frames  # the report tells what the bag holds
        assert "frames with failed answers" in result.stdout
    step, timed = reports["step"], reports["timed"]
    assert step["complete"] and step["answer_statuses"] == {"OK": 6} and step["frames_with_failed_answers"] == []
    # frames come every 0.1 s, each answer takes 0.5 s and the node queues one query: it must refuse some
    assert timed["answer_statuses"].get("BUSY", 0) >= 1
    assert timed["queries_sent"] == timed["answers_received"] == 6  # refused, answered BUSY, never silent
