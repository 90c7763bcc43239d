"""Every shell command of the documentation (README.md and docs/*.md) runs here as written, from a directory
outside the source tree, against the installed package; the few that cannot run on this machine are listed
with the reason.

A documented command that is neither run nor listed fails `test_every_documented_command_is_run_or_listed`,
so a new command in the README or docs/ needs a test before it can land. Test doubles stand in only for hardware and
weights: the camera (test/camera_process.py) and, where a command needs a language model, the scripted model
(test/doubles/scripted_model.py) added with `--set` to the README's own `up` command.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import time
from pathlib import Path

from user_path import Background, camera, run, up, workdir

ROOT = Path(__file__).resolve().parent.parent


def documentation() -> dict[str, str]:
    """README.md and every docs/*.md, by path relative to the repository root."""
    pages = {"README.md": (ROOT / "README.md").read_text()}
    pages.update({f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))})
    return pages


DOCS = documentation()
ALL_TEXT = "\n".join(DOCS.values())

NOT_RUNNABLE = {
    # set-up: CI runs exactly these two on a fresh machine (test_readme.py keeps .ci/run in sync)
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 ".[dev]"': "CI's install step",
    "python -m pytest -q": "CI's test step (this suite)",
    # a real ROS 2 install: no ros2 CLI, launch or ROS workspace here
    "cd ~/ros2_ws/src && git clone <this repository> chatrex_ros && cd ..": "needs a ROS 2 workspace and a clone URL",
    "colcon build --packages-select chatrex_ros && . install/setup.bash": "needs a sourced ROS 2 install",
    "ros2 launch chatrex_ros chatrex.launch.py image_topic:=/camera/color/image_raw": (
        "needs launch/launch_ros (not on PyPI); test_launch.py checks the description"
    ),
    # an external VLM server on a GPU machine; test_vlm_backend.py runs the node and eval against a stand-in
    "vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --max-model-len 16384 --limit-mm-per-prompt "
    "'{\"image\": 1}'": "serves a VLM on a GPU machine (vLLM is not installed here)",
    "ollama pull qwen2.5vl:7b": "downloads a model for Ollama on a GPU machine (not installed here)",
    "fastdds discovery -i 0 -l 0.0.0.0 -p 11811": (
        "a server that runs until stopped; test_multihost.py runs it inside a network namespace"
    ),
    "chatrex-ros up --image /camera/camera/color/image_raw --set language_node.language_backend=openai "
    "--set language_node.vlm.base_url=http://gpu-host:8000/v1 "
    "--set language_node.vlm.model=Qwen/Qwen2.5-VL-7B-Instruct": (
        "needs a VLM server at gpu-host; test_vlm_backend.py runs the node against a stand-in server"
    ),
}


def readme_commands(text: str = ALL_TEXT) -> list[str]:
    """The commands of every ```bash block: continuation lines joined, comments and blank lines dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip() if not line.lstrip().startswith("#") else ""
            if line:
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def _section(title: str, page: str = "README.md", own_only: bool = False) -> list[str]:
    """The commands of one section of ``page``: from its heading to the next heading of the same or a higher
    level (``own_only``: to the next heading of any level, leaving its subsections out)."""
    lines = DOCS[page].splitlines(keepends=True)
    start = next(
        (
            i
            for i, line in enumerate(lines)
            if re.fullmatch(rf"#+ {re.escape(title)}\n", line) and not _in_code(lines, i)
        ),
        None,
    )
    assert start is not None, f"{page} has no section {title!r}"
    level = 6 if own_only else len(lines[start]) - len(lines[start].lstrip("#"))
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(rf"#{{1,{level}}} ", lines[i]) and not _in_code(lines, i)),
        len(lines),
    )
    return readme_commands("".join(lines[start + 1 : end]))


def _in_code(lines: list[str], index: int) -> bool:
    return sum(line.startswith("```") for line in lines[:index]) % 2 == 1


ROBOT = _section("Running on a robot")
GRASP_ALONE = [c for c in readme_commands() if c.startswith("grasp_target_node ")]
EVALUATION_EXAMPLE = _section("Offline evaluation", "docs/evaluation.md", own_only=True)
REPLAY = _section("Online replay: a bag into the running nodes, recorded and scored", "docs/evaluation.md")
COLCON_PYPI = [
    c
    for c in readme_commands()
    if c.startswith(("pip install colcon", "AMENT_PREFIX_PATH=$VIRTUAL_ENV")) or c == ". install/setup.sh"
]
RUN_HERE = {"chatrex-ros demo", *ROBOT, *GRASP_ALONE, *EVALUATION_EXAMPLE, *REPLAY, *COLCON_PYPI}


def test_every_documented_command_is_run_or_listed() -> None:
    commands = set(readme_commands())
    assert commands, "no ```bash blocks found"
    unaccounted = commands - RUN_HERE - set(NOT_RUNNABLE)
    assert not unaccounted, f"documented commands without a test: {sorted(unaccounted)}"
    assert set(NOT_RUNNABLE) <= commands, f"listed but gone from the documentation: {set(NOT_RUNNABLE) - commands}"


def test_every_page_is_searched_for_commands() -> None:
    """The pages with ```bash blocks: a page left out of DOCS would leave its commands untested."""
    pages = {page for page, text in DOCS.items() if readme_commands(text)}
    assert {"README.md", "docs/evaluation.md", "docs/grasp.md"} <= pages, pages


def test_the_colcon_recipe_installs_every_build_requirement() -> None:
    """The PyPI colcon recipe must bring what pip's isolated build brings: the backend's distro table's list."""
    recipe = next(c for c in COLCON_PYPI if c.startswith("pip install"))
    asked = re.search(r"\$\(python src/chatrex_ros/(\S+) build-requires\)", recipe)
    assert asked and (ROOT / asked.group(1)) == ROOT / "build_tools" / "ros_distros.py", recipe


def _args(command: str) -> list[str]:
    return shlex.split(command)


def test_main_job_demo() -> None:
    cwd = workdir()
    result = run(["chatrex-ros", "demo"], cwd, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((cwd / "chatrex_demo" / "metrics.json").read_text())
    assert metrics["metrics"]["proposals"]["recall"]


def test_evaluation_example() -> None:
    cwd = workdir()
    for command in EVALUATION_EXAMPLE:
        result = run(_args(command), cwd, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    assert (cwd / "results" / "metrics.json").is_file()


def test_replay_example_run_twice_answers_about_the_replayed_frames() -> None:
    """The README block verbatim (`up &` in the background), then the replay and its scoring once more: a
    second run of the same bag jumps back in time and must be answered like the first."""
    cwd = workdir()
    background = [c for c in REPLAY if c.endswith("&")]
    assert background == ["chatrex-ros up &"], REPLAY
    graph = Background(_args(background[0].rstrip("& ")), cwd)
    try:
        graph.wait_for("proposal backend", "language backend", timeout=120)
        for command in [c for c in REPLAY if not c.endswith("&")]:
            result = run(_args(command), cwd, timeout=600)
            assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
        first = json.loads((cwd / "replay_rec.json").read_text())
        assert first["complete"] and first["frames_published"] == 6
        assert "not available" in (cwd / "replay_results" / "report.md").read_text()
        replay = next(c for c in REPLAY if c.startswith("chatrex-ros replay"))
        again = replay.replace("replay_rec", "replay_rec2")
        result = run(_args(again), cwd, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        second = json.loads((cwd / "replay_rec2.json").read_text())
        assert second["complete"] and second["frames_published"] == 6
        assert second["answer_statuses"] == first["answer_statuses"]
        assert second["frames_without_proposals"] == first["frames_without_proposals"] == []
        assert "time_jump" in graph.output()  # the language node saw the second run start over, and said so
    finally:
        assert graph.stop() == 0, graph.output()


SCRIPTED = [
    "--set",
    "language_node.language_backend=python:doubles.scripted_model:ScriptedModel",
    "--set",
    'language_node.backend_options={"answer": "<ground>mug</ground><objects><obj0></objects>"}',
]


def test_robot_block() -> None:
    """The camera graph, the asks against it, the dry run; the ChatRex command fails at start-up in one line."""
    cwd = workdir()
    ups = [c for c in ROBOT if c.startswith("chatrex-ros up") and "--dry-run" not in c]
    camera_graph, model_graph = ups
    topic = _args(camera_graph)[_args(camera_graph).index("--image") + 1]
    graph = up(cwd, *_args(camera_graph)[2:], *SCRIPTED)  # the README's command + the test double's model
    try:
        with camera(cwd, topic, 15):
            for command in [c for c in ROBOT if c.startswith("chatrex-ros ask")]:
                result = run(_args(command), cwd, timeout=120)
                assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
                assert "OK" in result.stdout, result.stdout
    finally:
        assert graph.stop() == 0, graph.output()

    # No ChatRex-7B here: the README's model command must stop at once with one line saying what is wrong.
    started = time.monotonic()
    result = run(_args(model_graph), cwd, timeout=120)
    assert result.returncode != 0
    assert "/models/ChatRex-7B" in result.stdout + result.stderr
    assert time.monotonic() - started < 60

    dry_run = next(c for c in ROBOT if "--dry-run" in c)
    result = run(_args(dry_run), cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "min_score: 0.5" in result.stdout

    (check,) = [c for c in ROBOT if c.startswith("chatrex-ros doctor")]
    result = run(_args(check), cwd)  # the default graph needs nothing this CPU machine lacks
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✔ chatrex_ros messages" in result.stdout and "– GPU " in result.stdout
    assert result.stdout.rstrip().endswith("no problems found")


def test_grasp_node_alone_joins_the_graph_namespace() -> None:
    cwd = workdir()
    (command,) = GRASP_ALONE
    with Background(_args(command), cwd) as node:
        node.wait_for("grasp targets:", timeout=60)
        assert "answers on /chatrex/answer" in node.output()
        assert "depth on /camera/camera/aligned_depth_to_color/image_raw" in node.output()
        assert node.stop(signal.SIGINT) == 0, node.output()


def test_colcon_build_with_the_pypi_wheels() -> None:
    """The README's recipe, verbatim, in this virtual environment, on a copy of the package in a workspace."""
    import os
    import shutil
    import subprocess
    import sys

    ws = workdir()
    ignore = shutil.ignore_patterns(
        ".venv", "build", "install", "log", ".git", "__pycache__", "*.so", "msg", "srv", "action"
    )
    shutil.copytree(ROOT, ws / "src" / "chatrex_ros", ignore=ignore)
    for name in (
        "msg",
        "srv",
        "action",
    ):  # the interface definitions (ignore_patterns dropped them with the generated code)
        shutil.copytree(ROOT / name, ws / "src" / "chatrex_ros" / name)
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = " && ".join(COLCON_PYPI)
    result = subprocess.run(
        ["bash", "-c", f"set -e; {script}"], cwd=ws, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert list((ws / "install" / "chatrex_ros").rglob("_answer.py")), "colcon built no messages"
    assert (ws / "install" / "chatrex_ros" / "share" / "chatrex_ros" / "launch" / "chatrex.launch.py").is_file()
