"""The robot path as a user runs it: `chatrex-ros up` (installed, outside the source tree) with overrides, a
camera in its own process at 10 and 30 Hz, a proposer slower than the frame interval, queries over DDS and
`chatrex-ros ask`, grasp targets from depth, time jumps. Every query sent is accounted for.

Test doubles (named as such): the camera driver (test/camera_process.py), a proposal model that sleeps
(test/doubles/slow_proposer.py) and a language model that answers from a script (test/doubles/scripted_model.py).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from ros_harness import RosClient, wait_until
from user_path import camera, run, up, workdir

from chatrex_ros.core.answering import AnswerStatus
from chatrex_ros.core.stamps import parse_stamp, stamp_to_ns
from chatrex_ros.msg import Answer, GraspTarget, ProposalArray, Query

pytestmark = pytest.mark.ros

SCRIPT = {"answer": "<ground>thing</ground><objects><obj5></objects>"}
SLOW_PROPOSER = "python:doubles.slow_proposer:SlowProposer"
SCRIPTED_MODEL = "python:doubles.scripted_model:ScriptedModel"


def graph_args(image_topic: str, delay_s: float, *extra: str) -> list[str]:
    """`up` with the test doubles plugged in through `--set`, everything else at its defaults."""
    return [
        "--image",
        image_topic,
        "--set",
        f"proposal_node.backend={SLOW_PROPOSER}",
        "--set",
        f"proposal_node.backend_options={json.dumps({'delay_s': delay_s})}",
        "--set",
        f"language_node.language_backend={SCRIPTED_MODEL}",
        "--set",
        f"language_node.backend_options={json.dumps(SCRIPT)}",
        *extra,
    ]


def ask_many(client: RosClient, count: int, period_s: float, answers: list[Answer], timeout_s: float = 30.0) -> dict:
    """Publish ``count`` newest-frame queries and wait until every one is answered; {query_id: Answer}."""
    publisher = client.publisher(Query, "/chatrex/query")
    client.wait_for_subscribers(publisher)
    ids = []
    for _ in range(count):
        query = Query(id=uuid.uuid4().hex[:12], task="detect", text="thing")
        ids.append(query.id)
        publisher.publish(query)
        time.sleep(period_s)
    wait_until(lambda: {a.query_id for a in list(answers)} >= set(ids), timeout_s, "an answer to every query")
    by_id = {a.query_id: a for a in list(answers) if a.query_id in ids}
    assert len(by_id) == count
    return by_id


@pytest.mark.parametrize("delay_s", [0.1, 1.0, 3.0])
def test_a_live_camera_with_a_slow_proposer_answers_at_defaults(delay_s) -> None:
    """≥ 99 % OK at 10 and 30 Hz with a proposer taking 0.1, 1 and 3 s per frame; answers about the newest
    frame that has proposals, with that frame's header."""
    cwd = workdir()
    topic = f"/e2e_{int(delay_s * 10)}/image_raw"
    client = RosClient("robot_path_client")
    graph = up(cwd, *graph_args(topic, delay_s))
    try:
        answers = client.subscribe(Answer, "/chatrex/answer", depth=200)
        proposals = client.subscribe(ProposalArray, "/chatrex/proposals", depth=200)
        for rate in (10, 30):
            with camera(cwd, topic, rate) as driver:
                driver.wait_for("camera: 50 frames")  # asked once the camera runs (before: NO_IMAGE, by design)
                by_id = ask_many(client, 12, 0.4, answers, timeout_s=30 + 3 * delay_s)
            ok = [a for a in by_id.values() if a.status == AnswerStatus.OK]
            assert len(ok) >= 0.99 * len(by_id), {a.status_message for a in by_id.values()}
            published = {(p.header.stamp.sec, p.header.stamp.nanosec) for p in list(proposals)}
            for answer in ok:  # about a frame the proposer really published, with its header
                assert (answer.header.stamp.sec, answer.header.stamp.nanosec) in published
                assert answer.header.frame_id == "camera_color_optical_frame"
                assert [d.proposal_index for d in answer.detections] == [5]
    finally:
        client.close()
        assert graph.stop() == 0, graph.output()


def _diagnostics(client: RosClient, node: str) -> dict[str, str]:
    bucket = client.received.get("/diagnostics") or client.subscribe(DiagnosticArray, "/diagnostics", depth=100)
    wait_until(lambda: any(s.name.endswith(node) for a in list(bucket) for s in a.status), 15, f"{node} diagnostics")
    status = [s for a in list(bucket) for s in a.status if s.name.endswith(node)][-1]
    return {"level": status.level, "message": status.message, **{kv.key: kv.value for kv in status.values}}


def test_silence_lost_frames_and_no_model_show_on_diagnostics() -> None:
    """No data, a camera without the shared-memory profile, no model: WARN with the topic and the fix."""
    cwd = workdir()
    topic = "/e2e_silent/image_raw"
    client = RosClient("robot_path_diagnostics")
    graph = up(
        cwd,
        "--image",
        topic,
        "--set",
        "proposal_node.warmup=false",
        "--set",
        "language_node.input_silence_s=1.0",
        "--set",
        "proposal_node.input_silence_s=1.0",
    )
    try:
        time.sleep(2.5)
        client.received.pop("/diagnostics", None)
        status = _diagnostics(client, "language_node")
        assert status["level"] == b"\x01"
        assert f"no publisher on {topic}" in status["message"] and "--image" in status["message"]
        assert "no language model configured" in status["message"]
        assert "no_images" in graph.output()  # and said once in the log
        assert f"no publisher on {topic}" in _diagnostics(client, "proposal_node")["message"]

        with camera(cwd, topic, 30, profile=False):  # a driver started without the package's Fast DDS profile

            def lost() -> bool:
                client.received.pop("/diagnostics", None)
                return int(_diagnostics(client, "language_node").get("images_lost_in_transport", "0")) > 0

            wait_until(lost, 20, "lost samples to be reported")
        assert "FASTDDS_DEFAULT_PROFILES_FILE" in graph.output()
    finally:
        client.close()
        assert graph.stop() == 0, graph.output()


def test_ask_prints_exact_stamps_that_a_follow_up_finds() -> None:
    cwd = workdir()
    topic = "/e2e_ask/image_raw"
    graph = up(cwd, *graph_args(topic, 0.3))
    try:
        with camera(cwd, topic, 15):
            text = run(["chatrex-ros", "ask", "thing", "--timeout", "30"], cwd)
            assert text.returncode == 0, text.stdout + text.stderr
            assert "status: OK" in text.stdout and "<obj5>" not in text.stdout
            first = run(["chatrex-ros", "ask", "thing", "--json", "--timeout", "30"], cwd)
            assert first.returncode == 0, first.stdout + first.stderr
            summary = json.loads(first.stdout)
            assert summary["status"] == "OK" and summary["detections"][0]["index"] == 5
            follow_up = run(
                [
                    "chatrex-ros",
                    "ask",
                    "",
                    "--task",
                    "region_category",
                    "--indices",
                    "5",
                    "--stamp",
                    summary["image_stamp"],
                    "--json",
                    "--timeout",
                    "30",
                ],
                cwd,
            )
            assert follow_up.returncode == 0, follow_up.stdout + follow_up.stderr
            again = json.loads(follow_up.stdout)
            assert again["image_stamp_ns"] == summary["image_stamp_ns"] == parse_stamp(summary["image_stamp"])
    finally:
        assert graph.stop() == 0, graph.output()


def test_up_grasp_connects_answer_depth_and_both_camera_infos() -> None:
    cwd = workdir()
    topic, depth = "/e2e_grasp/color/image_raw", "/e2e_grasp/aligned_depth_to_color/image_raw"
    infos = ("/e2e_grasp/aligned_depth_to_color/camera_info", "/e2e_grasp/color/camera_info")
    client = RosClient("robot_path_grasp")
    # At the defaults (best-effort KEEP_LAST(1) depth, exact stamps): the grasp node's callbacks return at once
    # and one executor thread keeps up with the depth stream on a loaded machine (CI: 2 cores, 5 processes).
    graph = up(
        cwd,
        *graph_args(
            topic,
            1.0,
            "--grasp",
            "--depth",
            depth,
            "--depth-info",
            infos[0],
            "--color-info",
            infos[1],
        ),
    )
    try:
        targets = client.subscribe(GraspTarget, "/chatrex/grasp_target")
        answers = client.subscribe(Answer, "/chatrex/answer")
        proposals = client.subscribe(ProposalArray, "/chatrex/proposals")
        with camera(cwd, topic, 15, depth=(depth, *infos)):
            wait_until(lambda: len(proposals) >= 2, 30, "proposals to flow")  # discovery done everywhere
            by_id = ask_many(client, 3, 1.0, answers)
            try:
                wait_until(lambda: {t.query_id for t in list(targets)} >= set(by_id), 20, "a grasp target per answer")
            except AssertionError as error:
                raise AssertionError(f"{error}\n{graph.output()}") from None
        for target in [t for t in list(targets) if t.query_id in by_id]:
            assert target.valid, f"{target.reason}\n{graph.output()}"
            answer = by_id[target.query_id]
            assert target.header.stamp == answer.header.stamp  # the depth frame of the answered image
            assert target.point.z == pytest.approx(0.6, abs=0.01)  # the near box of the depth double
    finally:
        client.close()
        assert graph.stop() == 0, graph.output()


def test_a_frame_stamped_in_the_future_does_not_stay_newest() -> None:
    """A camera clock glitch: one frame far in the future must not answer every later query."""
    from ros_harness import header, textured_image
    from sensor_msgs.msg import Image

    cwd = workdir()
    client = RosClient("robot_path_glitch")
    graph = up(cwd, *graph_args("/e2e_glitch/image_raw", 0.05))
    try:
        answers = client.subscribe(Answer, "/chatrex/answer", depth=100)
        proposals = client.subscribe(ProposalArray, "/chatrex/proposals", depth=100)
        images = client.publisher(Image, "/e2e_glitch/image_raw", reliable=False, depth=1)
        client.wait_for_subscribers(images, 2)
        rgb = textured_image(240, 320)
        now = time.time_ns()
        stamps = [now + k * 100_000_000 for k in range(20)]
        stamps[5] = now + 10**6 * 1_000_000_000  # eleven days ahead
        for stamp in stamps:
            msg = Image(header=header(stamp), height=240, width=320, encoding="rgb8", step=960, data=rgb.tobytes())
            images.publish(msg)
            time.sleep(0.1)

        def proposed() -> list[int]:
            return [stamp_to_ns(p.header.stamp) for p in list(proposals)]

        wait_until(lambda: len(proposals) >= 15, 20, "proposals for the frames")
        # A loaded machine may drop the last frame (best-effort, newest wins): wait briefly for it, then expect
        # the newest real frame that was proposed, which must never be the glitch.
        deadline = time.monotonic() + 5
        while stamps[-1] not in proposed() and time.monotonic() < deadline:
            time.sleep(0.1)
        newest_real = max(stamp for stamp in proposed() if stamp != stamps[5])
        assert newest_real >= stamps[-4]
        by_id = ask_many(client, 3, 0.1, answers)
        for answer in by_id.values():
            assert answer.status == AnswerStatus.OK, answer.status_message
            assert stamp_to_ns(answer.header.stamp) == newest_real  # the newest real frame, not the glitch
    finally:
        client.close()
        assert graph.stop() == 0, graph.output()


def test_a_named_frame_that_is_not_cached_fails_fast() -> None:
    cwd = workdir()
    graph = up(cwd, *graph_args("/e2e_named/image_raw", 0.05))
    client = RosClient("robot_path_named")
    try:
        with camera(cwd, "/e2e_named/image_raw", 10):
            answers = client.subscribe(Answer, "/chatrex/answer")
            proposals = client.subscribe(ProposalArray, "/chatrex/proposals")
            publisher = client.publisher(Query, "/chatrex/query")
            client.wait_for_subscribers(publisher)
            wait_until(lambda: len(proposals) >= 2, 30, "the graph to see frames")  # later frames exist
            # The language node's own image reader may match later than the proposal node's: an answer about
            # the newest frame shows that its images arrive too.
            publisher.publish(Query(id="warm", task="detect", text="thing"))
            wait_until(lambda: any(a.query_id == "warm" for a in list(answers)), 30, "the first answer")
            started = time.monotonic()
            publisher.publish(Query(id="old", task="detect", text="thing", image_stamp=Time(sec=1, nanosec=5)))
            wait_until(lambda: any(a.query_id == "old" for a in list(answers)), 10, "the answer")
            assert time.monotonic() - started < 2.0
            answer = next(a for a in list(answers) if a.query_id == "old")
            assert answer.status == AnswerStatus.NO_IMAGE and "1.000000005" in answer.status_message
    finally:
        client.close()
        assert graph.stop() == 0, graph.output()


def test_a_timed_replay_run_twice_is_answered_about_each_runs_frames() -> None:
    """The second run of a bag starts over in time: it must be answered like the first, not from frames the
    first run left in the cache (before: P/R 8.3 on the first run, 0.0 on the second)."""
    cwd = workdir()
    made = run(["chatrex-ros", "make-sample", "--out", "bag"], cwd)
    assert made.returncode == 0, made.stderr
    graph = up(cwd, *graph_args("/camera/image_raw", 0.05))
    try:
        summaries = []
        for attempt in (1, 2):
            result = run(
                [
                    "chatrex-ros",
                    "replay",
                    "--bag",
                    "bag",
                    "--gt",
                    "bag_annotations.json",
                    "--queries",
                    "bag_queries.json",
                    "--rate",
                    "0.5",
                    "--drain",
                    "20",
                    "--summary-json",
                    f"run{attempt}.json",
                    "--record",
                    f"rec{attempt}",
                ],
                cwd,
                timeout=300,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            summaries.append(json.loads((cwd / f"run{attempt}.json").read_text()))
        first, second = summaries
        assert first["frames_without_proposals"] == second["frames_without_proposals"] == []
        assert first["answer_statuses"] == second["answer_statuses"] == {"OK": first["queries_planned"]}
        scores = []
        for attempt in (1, 2):
            result = run(
                [
                    "chatrex-ros",
                    "eval",
                    "--answers",
                    f"rec{attempt}",
                    "--gt",
                    "bag_annotations.json",
                    "--queries",
                    "bag_queries.json",
                    "--out",
                    f"eval{attempt}",
                    "--no-plots",
                    "--quiet",
                ],
                cwd,
            )
            assert result.returncode == 0, result.stderr
            metrics = json.loads((cwd / f"eval{attempt}" / "metrics.json").read_text())["metrics"]
            scores.append((metrics["proposals"], metrics["answers"]))
        assert scores[0] == scores[1]
        assert "time_jump" in graph.output()
    finally:
        assert graph.stop() == 0, graph.output()


def test_a_jpeg_bag_replays_into_up_on_the_compressed_transport() -> None:
    """make-bag --encoding jpeg on `<camera>/compressed`, `up` with image_transport=compressed and the same --image:
    image_transport's naming joins them without a remap by hand (the README trial's replay found no subscriber)."""
    from test_make_bag import write_dataset

    cwd = workdir()
    dataset = write_dataset(cwd / "dataset", count=8, width=96, height=72)
    made = run(
        [
            "chatrex-ros",
            "make-bag",
            "--images",
            str(dataset["images"]),
            "--annotations",
            str(dataset["annotations"]),
            "--out",
            "bag",
            "--encoding",
            "jpeg",
            "--topic",
            "/camera/image_raw/compressed",
        ],
        cwd,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    compressed = [
        "--set",
        "proposal_node.image_transport=compressed",
        "--set",
        "language_node.image_transport=compressed",
    ]
    graph = up(cwd, *graph_args("/camera/image_raw", 0.05, *compressed))
    try:
        result = run(
            [
                "chatrex-ros",
                "replay",
                "--bag",
                "bag",
                "--step",
                "--gt",
                "bag_annotations.json",
                "--summary-json",
                "s.json",
            ],
            cwd,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr + graph.output()
        summary = json.loads((cwd / "s.json").read_text())
        assert summary["frames_published"] == 8 and summary["frames_without_proposals"] == []
        assert summary["answer_statuses"] == {"OK": summary["queries_planned"]} and summary["queries_planned"] > 0
    finally:
        assert graph.stop() == 0, graph.output()
