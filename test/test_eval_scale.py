"""Many bags, many workers, compared runs, ros2_benchmark keys (issue 14).

Small generated bags, each with its ground truth beside it (``<bag>_annotations.json``, as make-sample
writes it), go through `chatrex-ros eval` serially, in two worker processes and as Ray tasks: the metrics
must be identical (timings apart), pooled over all records rather than averaged per bag, and a corrupt bag
must be reported while the others are scored. The proposer and language model of the exact-number tests
are TEST DOUBLES (test/doubles): a fixed grid of boxes and a scripted answer, so the expected metrics are
known by construction.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from chatrex_ros.cli import main
from chatrex_ros.core.answering import AnswerStatus, QueryRequest
from chatrex_ros.eval.bagio import BagWriter
from chatrex_ros.eval.bags import discover_bags, plan_jobs
from chatrex_ros.eval.pooling import without_timing
from chatrex_ros.replay.options import ReplayOptions
from chatrex_ros.replay.plan import ReplayFrame, ReplayPlan
from chatrex_ros.replay.progress import ReplayProgress
from chatrex_ros.replay.report import R2B_METRICS, basic_performance, r2b_key

TOPIC = "/camera/image_raw"
W, H = 96, 72  # the grid double's 12 boxes are the 24x24 cells [24i, 24j, 24i+23, 24j+23]
T0 = 1_700_000_000 * 10**9
MS = 1_000_000
S = 1_000_000_000
GRID = ["--proposal-backend", "python:doubles.slow_proposer:SlowProposer", "--proposal-param", "delay_s=0"]
CAT_ANSWER = "<ground>cat</ground><objects><obj0></objects>"  # every detect prompt: "cat" is the top box
SCRIPTED = [
    "--language-backend",
    "python:doubles.scripted_model:ScriptedModel",
    "--language-param",
    f"answer={CAT_ANSWER}",
]
CELL0 = [0, 0, 23, 23]  # COCO x, y, w, h of the grid's first (top-scored) box
BAG_LABELS = ("alpha", "beta", "delta", "gamma")
OFF_GRID = [[10, 10, 14, 14], [34, 34, 14, 14], [58, 10, 14, 14]]  # IoU < 0.5 with every grid box


def picture(seed: int) -> np.ndarray:
    """A few flat rectangles on a background: structure for selective search, reproducible by seed."""
    rng = np.random.default_rng(seed)
    rgb = np.full((H, W, 3), rng.integers(0, 255, 3), np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, W - 20), rng.integers(0, H - 20)
        rgb[y : y + rng.integers(10, 30), x : x + rng.integers(10, 40)] = rng.integers(0, 255, 3)
    return rgb


def write_bag(
    path: Path, frames: list[tuple[int, list[tuple[str, list[int]]]]], seed: int, queries: list | None = None
) -> Path:
    """A bag of ``frames`` (stamp, [(category, COCO bbox)]) with ``<bag>_annotations.json`` beside it."""
    coco = {"images": [], "annotations": [], "categories": []}
    names: dict[str, int] = {}
    with BagWriter(path) as writer:
        for index, (stamp, objects) in enumerate(frames, start=1):
            writer.write_image(TOPIC, picture(seed * 100 + index), stamp, "cam")
            coco["images"].append({"id": index, "stamp_ns": stamp, "width": W, "height": H})
            for category, bbox in objects:
                names.setdefault(category, len(names) + 1)
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": index,
                        "category_id": names[category],
                        "bbox": bbox,
                    }
                )
    coco["categories"] = [{"id": i, "name": n} for n, i in names.items()]
    Path(f"{path}_annotations.json").write_text(json.dumps(coco))
    if queries is not None:
        Path(f"{path}_queries.json").write_text(json.dumps({"queries": queries}))
    return path


def eval_json(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


# --- many bags: serial == workers, a corrupt bag reported --------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """bags/: alpha (dir), beta (dir), delta (dir, truncated), gamma.mcap (a single file), each with its GT."""
    root = tmp_path_factory.mktemp("many") / "bags"
    root.mkdir()
    write_bag(root / "alpha", [(T0 + k * 100 * MS, [("cat", CELL0), ("box", [40, 30, 30, 30])]) for k in range(3)], 1)
    write_bag(root / "beta", [(T0 + k * 100 * MS, [("dog", b) for b in OFF_GRID]) for k in range(2)], 2)
    gamma = write_bag(root / "gamma_dir", [(T0 + k * 50 * MS, [("cat", [20, 20, 40, 30])]) for k in range(2)], 3)
    shutil.move(next(gamma.glob("*.mcap")), root / "gamma.mcap")  # a bag as one .mcap file
    shutil.rmtree(gamma)
    Path(f"{gamma}_annotations.json").rename(root / "gamma_annotations.json")
    delta = write_bag(root / "delta", [(T0 + k * MS, [("cat", CELL0)]) for k in range(3)], 4)
    data = next(delta.glob("*.mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])  # truncated recording
    return root


@pytest.fixture(scope="module")
def serial_and_workers(folder, tmp_path_factory):
    """The folder evaluated with selective search (the default) and the scripted language model, serially and
    in 2 worker processes (progress bars on: they must not disturb anything)."""
    outs = {}
    for name, extra in (("serial", []), ("workers", ["--workers", "2"])):
        out = tmp_path_factory.mktemp(name)
        code = main(["eval", "--bag", str(folder), "--out", str(out), "--no-plots", "--quiet", *SCRIPTED, *extra])
        outs[name] = (code, out)
    return outs


def test_a_folder_of_bags_is_found_in_name_order_with_the_ground_truth_beside_each(folder) -> None:
    bags = discover_bags([folder])
    assert [b.name for b in bags] == ["alpha", "beta", "delta", "gamma.mcap"]
    jobs = plan_jobs(bags)
    assert [j.label for j in jobs] == list(BAG_LABELS)
    assert [Path(j.gt).name for j in jobs] == [f"{j.label}_annotations.json" for j in jobs]
    assert all(j.queries is None for j in jobs)


def test_serial_and_two_workers_give_identical_metrics_and_bag_sections(serial_and_workers) -> None:
    (serial_code, serial_out), (workers_code, workers_out) = serial_and_workers["serial"], serial_and_workers["workers"]
    assert serial_code == workers_code == 1  # delta is corrupt
    serial, workers = eval_json(serial_out), eval_json(workers_out)
    assert without_timing(serial) == without_timing(workers)
    assert [b["label"] for b in serial["bags"]] == [b["label"] for b in workers["bags"]] == list(BAG_LABELS)
    for mine, theirs in zip(serial["bags"], workers["bags"], strict=True):  # timing apart, every bag's section
        assert {k: v for k, v in mine.items() if k != "timing"} == {k: v for k, v in theirs.items() if k != "timing"}
    assert serial["timing"]["executor"]["kind"] == "serial"
    assert workers["timing"]["executor"] == {"kind": "process", "workers": 2, "start_method": "spawn"}
    assert serial["metrics"]["answers"]["detection"]["frames"] == 3 + 2 + 2
    # each bag's own outputs beside the pooled ones
    for label in ("alpha", "beta", "gamma"):
        own = eval_json(serial_out / "bags" / label)
        assert own["metrics"] == next(b for b in serial["bags"] if b["label"] == label)["metrics"]
    assert "## Per bag" in (serial_out / "report.md").read_text()


def test_on_a_terminal_there_is_a_bar_of_bags_and_one_of_frames_per_bag(folder, tmp_path) -> None:
    """The bars draw only on a terminal: run the command on a pseudo-terminal, as a user's shell would."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # tqdm draws nothing at 0 columns
    bags = [str(folder / name) for name in ("alpha", "beta")]
    command = [sys.executable, "-m", "chatrex_ros.cli", "eval", "--bag", *bags, *GRID, "--out", str(tmp_path)]
    process = subprocess.Popen([*command, "--quiet", "--workers", "2"], stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the command exited and closed its end
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "bags: 100%" in text and "2/2" in text  # the overall bar, finished
    assert "alpha" in text and "beta" in text and "frame" in text  # a bar of frames for each bag


def test_a_corrupt_bag_is_reported_and_the_others_are_scored(serial_and_workers, folder, capsys) -> None:
    report = eval_json(serial_and_workers["serial"][1])
    statuses = {b["label"]: b["status"] for b in report["bags"]}
    assert statuses == {"alpha": "ok", "beta": "ok", "delta": "failed", "gamma": "ok"}
    failure = next(b for b in report["bags"] if b["label"] == "delta")
    assert failure["error"].startswith("BagError: cannot open bag") and str(folder / "delta") in failure["error"]
    assert report["inputs"]["bags_failed"] == ["delta"] and report["inputs"]["bags_evaluated"] == 3
    assert report["inputs"]["frames_evaluated"] == 7
    assert any("1 of 4 bag(s) failed" in note and "delta" in note for note in report["notes"])
    assert "| delta | – |" in (serial_and_workers["serial"][1] / "report.md").read_text()


def test_without_a_language_model_many_bags_say_so_once_and_report_answers_unavailable(folder, tmp_path) -> None:
    code = main(
        ["eval", "--bag", str(folder / "alpha"), str(folder / "beta"), *GRID, "--out", str(tmp_path), "--quiet"]
    )
    assert code == 0
    report = eval_json(tmp_path)
    no_model = [note for note in report["notes"] if note.startswith("No language model configured")]
    assert len(no_model) == 1  # a note every bag shares is said once, not once per bag with its label
    answers = report["metrics"]["answers"]
    assert answers["available"] is False and answers["no_language_model"] and answers["detection"] is None
    assert all(b["metrics"]["answers"]["available"] is False for b in report["bags"])


def test_a_mistyped_bag_path_is_named_as_missing_not_as_missing_ground_truth(folder, tmp_path, capsys) -> None:
    assert main(["eval", "--bag", str(folder / "alph"), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"bag {folder / 'alph'} does not exist" in error and "--gt" not in error


def test_the_exit_status_and_stderr_name_the_failed_bag(folder, tmp_path, capsys) -> None:
    code = main(["eval", "--bag", str(folder / "delta"), str(folder / "beta"), *GRID, "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"bag {folder / 'delta'} failed: BagError" in err
    assert eval_json(tmp_path)["inputs"]["bags_evaluated"] == 1


class WorkerKillerTestDouble:
    """TEST DOUBLE of a proposer that takes its process down (a segfault, the OOM killer) on an all-black frame;
    the grid of boxes otherwise. Loaded by the workers as ``python:test_eval_scale:WorkerKillerTestDouble``."""

    name = "worker_killer_test_double"

    def propose(self, image_rgb: np.ndarray):
        from chatrex_ros.core.types import RawProposals

        if image_rgb.max() == 0:
            os._exit(3)
        boxes = np.array([[24 * (k % 4), 24 * (k // 4), 24 * (k % 4) + 23, 24 * (k // 4) + 23] for k in range(12)])
        return RawProposals(boxes.astype(np.float32), np.linspace(0.99, 0.5, 12, dtype=np.float32))


def test_a_bag_that_kills_its_worker_is_named_and_the_others_are_scored(folder, tmp_path, capsys) -> None:
    killer = tmp_path / "killer"
    with BagWriter(killer) as writer:
        writer.write_image(TOPIC, np.zeros((H, W, 3), np.uint8), T0, "cam")
    coco = {"images": [{"id": 1, "stamp_ns": T0, "width": W, "height": H}], "annotations": [], "categories": []}
    Path(f"{killer}_annotations.json").write_text(json.dumps(coco))
    bags = [str(folder / "alpha"), str(killer), str(folder / "beta")]
    proposer = ["--proposal-backend", "python:test_eval_scale:WorkerKillerTestDouble"]
    code = main(["eval", "--bag", *bags, *proposer, "--workers", "2", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1
    report = eval_json(tmp_path / "out")
    assert [(b["label"], b["status"]) for b in report["bags"]] == [
        ("alpha", "ok"),
        ("killer", "failed"),
        ("beta", "ok"),
    ]
    assert "its worker process died" in report["bags"][1]["error"]
    assert f"bag {killer} failed: its worker process died" in capsys.readouterr().err


# --- pooled, not averaged ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pooled_case(tmp_path_factory):
    """Bag one: a cat the grid finds (recall 1) and a referring query; bag two: 3 dogs it misses (recall 0).
    Pooled recall is 1/4; the mean of the bags' recalls would be 1/2. Also one bag holding both frames."""
    root = tmp_path_factory.mktemp("pooled")
    query = {"id": "the-cat", "image_id": 1, "phrase": "the cat", "annotation_id": 1}
    negative = {"id": "no-giraffe", "image_id": 1, "phrase": "giraffe", "negative": True}
    write_bag(root / "one", [(T0, [("cat", CELL0)])], 5, queries=[query, negative])
    write_bag(root / "two", [(T0, [("dog", b) for b in OFF_GRID])], 6)  # the same stamp as bag one
    both = write_bag(root / "both", [(T0, [("cat", CELL0)]), (T0 + S, [("dog", b) for b in OFF_GRID])], 7)
    Path(f"{both}_queries.json").write_text(json.dumps({"queries": [query, negative]}))
    outs = {}
    for name, bags in (("pooled", ["one", "two"]), ("both", ["both"])):
        out = root / f"out_{name}"
        code = main(["eval", "--bag", *(str(root / b) for b in bags), "--out", str(out), "--quiet", *GRID, *SCRIPTED])
        assert code == 0
        outs[name] = eval_json(out)
    outs["root"] = root
    return outs


def test_pooled_metrics_score_all_records_together_not_the_mean_of_the_bags(pooled_case) -> None:
    pooled, both = pooled_case["pooled"], pooled_case["both"]
    bag_recall = [b["metrics"]["proposals"]["recall"]["100"]["iou_0.5"] for b in pooled["bags"]]
    assert bag_recall == [1.0, 0.0]
    assert pooled["metrics"]["proposals"]["recall"]["100"]["iou_0.5"] == 0.25 != np.mean(bag_recall)
    detection = pooled["metrics"]["answers"]["detection"]
    assert detection["per_class"]["cat"] == {"tp": 1, "fp": 1, "fn": 0, "precision": 0.5, "recall": 1.0}
    assert detection["per_class"]["dog"]["fn"] == 3 and detection["recall_iou_0.5"] == 0.5
    assert pooled["metrics"]["answers"]["referring"]["per_query"] == {"one/the-cat": True}
    assert pooled["metrics"]["answers"]["referring"]["negatives"]["per_query"] == {"one/no-giraffe": False}
    queries_file = f"{pooled_case['root'] / 'one'}_queries.json"  # bag two has none
    assert pooled["inputs"]["queries_files"] == [queries_file] and pooled["inputs"]["queries"] == 2
    assert f"* queries: `{queries_file}` (2)" in (pooled_case["root"] / "out_pooled" / "report.md").read_text()
    # the same frames and answers in one bag score exactly the same (ids aside: the pooled ones name their bag)
    relabelled = json.loads(json.dumps(pooled["metrics"]).replace('"one/', '"'))
    assert relabelled == both["metrics"]


def test_ground_truth_rules_for_many_bags_are_checked_before_any_work(pooled_case, tmp_path, capsys) -> None:
    root = pooled_case["root"]
    one, two = str(root / "one"), str(root / "two")
    assert main(["eval", "--bag", one, two, "--gt", f"{one}_annotations.json", "--out", str(tmp_path)]) == 2
    assert "--gt names one ground truth but 2 bags" in capsys.readouterr().err
    lonely = tmp_path / "lonely"
    shutil.copytree(root / "two", lonely)
    assert main(["eval", "--bag", one, str(lonely), "--out", str(tmp_path)]) == 2
    assert f"expected {lonely}_annotations.json" in capsys.readouterr().err
    assert main(["eval", "--bag", one, "--workers", "0", "--out", str(tmp_path)]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_one_bag_finds_its_ground_truth_and_queries_beside_it(pooled_case, tmp_path) -> None:
    root = pooled_case["root"]
    assert main(["eval", "--bag", str(root / "one"), "--out", str(tmp_path), "--quiet", "--no-plots", *GRID]) == 0
    report = eval_json(tmp_path)
    assert "bags" not in report and report["inputs"]["ground_truth"] == f"{root / 'one'}_annotations.json"
    assert report["inputs"]["queries"] == 2
    assert report["inputs"]["queries_file"] == f"{root / 'one'}_queries.json"  # said where they came from
    assert f"* queries: `{root / 'one'}_queries.json` (2)" in (tmp_path / "report.md").read_text()


# --- Ray -----------------------------------------------------------------------------------------------
def test_the_ray_executor_gives_the_serial_metrics(folder, serial_and_workers, tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is optional (pip install 'chatrex_ros[ray]'); CI does not install it")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = main(["eval", "--bag", str(folder), "--executor", "ray", "--out", str(tmp_path), "--quiet", *SCRIPTED])
    finally:
        ray.shutdown()
    assert code == 1
    assert without_timing(eval_json(tmp_path)) == without_timing(eval_json(serial_and_workers["serial"][1]))
    assert eval_json(tmp_path)["timing"]["executor"]["kind"] == "ray"


def test_without_ray_the_executor_says_how_to_install_it(pooled_case, tmp_path, capsys, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    root = pooled_case["root"]
    code = main(["eval", "--bag", str(root / "one"), "--executor", "ray", "--out", str(tmp_path), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("pip install 'chatrex_ros[ray]'") and len(err.splitlines()) == 1


# --- --compare -----------------------------------------------------------------------------------------
def test_compare_puts_two_runs_side_by_side_with_differences_and_plots(pooled_case, tmp_path, capsys) -> None:
    runs = pooled_case["root"] / "out_pooled" / "bags"
    out = tmp_path / "cmp"
    assert main(["eval", "--compare", str(runs / "one"), str(runs / "two"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| metric | one | two | Δ two |" in table
    assert "| proposal recall@100, IoU 0.5 | 100.0 | 0.0 | -100.0 |" in table
    assert "| referring accuracy, IoU 0.5 | 100.0 | – | – |" in table  # bag two has no referring queries
    assert "| frames evaluated | 1 | 1 | +0 |" in table
    assert "| language model p50 (ms) |" in table  # the scripted model's latency, an offline run's stage
    assert f"`{runs / 'two'}`, ground truth `{pooled_case['root'] / 'two'}_annotations.json`" in table
    assert "scored against different ground truth" in table  # each bag has its own
    assert "## Detection recall per class, IoU 0.5" in table
    assert "| dog | – | 0.0 | – |" in table and "| cat | 100.0 | – | – |" in table
    assert (out / "compare.md").read_text() == table.rstrip("\n") + "\n"
    data = json.loads((out / "compare.json").read_text())
    recall = next(r for r in data["headline"]["rows"] if r["name"] == "proposal recall@100, IoU 0.5")
    assert recall["values"] == {"one": 1.0, "two": 0.0} and recall["difference_vs_first"]["two"] == -1.0
    for name in ("compare_headline.png", "compare_per_class.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_needs_two_runs_with_metrics(tmp_path, capsys) -> None:
    assert main(["eval", "--compare", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert main(["eval", "--compare", str(tmp_path), str(tmp_path / "nope")]) == 2
    assert "no metrics.json" in capsys.readouterr().err


# --- ros2_benchmark keys in the replay summary -----------------------------------------------------------
def test_basic_performance_follows_ros2_benchmark_definitions() -> None:
    sent = {0: 0, 1: 100 * MS, 2: 200 * MS, 3: 300 * MS}
    received = {0: 40 * MS, 1: 150 * MS, 2: 230 * MS}  # frame 3 never came back
    values = basic_performance(sent, received)
    expected = {
        "NUM_FRAMES_SENT": 4,
        "NUM_MISSED_FRAMES": 1,
        "RECEIVED_DURATION": 190.0,
        "MEAN_FRAME_RATE": round(3 / 0.19, 3),
        "MEAN_PLAYBACK_FRAME_RATE": round(4 / 0.3, 3),
        "FIRST_SENT_RECEIVED_LATENCY": 40.0,
        "LAST_SENT_RECEIVED_LATENCY": -70.0,
        "FIRST_INPUT_LATENCY": 40.0,
        "LAST_INPUT_LATENCY": 30.0,
        "MAX_LATENCY": 50.0,
        "MIN_LATENCY": 30.0,
        "MEAN_LATENCY": 40.0,
        "MAX_JITTER": 30.0,
        "MIN_JITTER": 30.0,
        "MEAN_JITTER": 30.0,
        "STD_DEV_JITTER": 0.0,
    }
    assert values == {f"BasicPerformanceMetrics.{name}": value for name, value in expected.items()}
    assert set(expected) == set(R2B_METRICS)
    # too few samples: the keys r2b cannot compute are left out, the counts stay
    assert basic_performance({0: 0}, {}) == {r2b_key("NUM_FRAMES_SENT"): 1, r2b_key("NUM_MISSED_FRAMES"): 1}


def test_the_replay_summary_has_ros2_benchmark_keys_consistent_with_its_latency() -> None:
    request = QueryRequest.create("detect", text="cup")
    frames = [ReplayFrame(i, (10 + i) * S, (10 + i) * S, ((f"q{i}", request),)) for i in range(3)]
    progress = ReplayProgress(frames)
    for i, (proposal_ms, answer_ms) in enumerate(((40, 90), (55, 120), (35, 80))):
        published = 100 * S + i * 100 * MS
        progress.published(i, published)
        progress.query_sent(i, f"q{i}", published + proposal_ms * MS)
        progress.proposals_received((10 + i) * S, 7, published + proposal_ms * MS)
        progress.answer_received(f"q{i}", (10 + i) * S, int(AnswerStatus.OK), published + answer_ms * MS)
    plan = ReplayPlan(Path("bag"), "/image", "sensor_msgs/msg/Image", tuple(frames))
    summary = json.loads(json.dumps(progress.report(plan, ReplayOptions(step=True), 1.0, {}).to_json()))
    r2b, latency = summary["ros2_benchmark"], summary["latency_ms"]
    assert summary["complete"] and "latency_ms" in summary and "frames_published" in summary  # existing keys kept
    for stream, fastest in (("proposals", 35.0), ("answers", 80.0)):
        assert r2b[stream][r2b_key("MAX_LATENCY")] == latency[stream]["max"]
        assert r2b[stream][r2b_key("MIN_LATENCY")] == fastest  # latency_ms has no min
        assert r2b[stream][r2b_key("MEAN_LATENCY")] == pytest.approx(latency[stream]["mean"], abs=1e-3)
        assert r2b[stream][r2b_key("NUM_FRAMES_SENT")] == 3 and r2b[stream][r2b_key("NUM_MISSED_FRAMES")] == 0
    assert r2b["proposals"][r2b_key("MEAN_PLAYBACK_FRAME_RATE")] == pytest.approx(3 / 0.2)
    assert r2b["answers"][r2b_key("FIRST_INPUT_LATENCY")] == 90.0  # from the frame's publication, as latency_ms
