"""`chatrex-ros replay`: play a bag's camera frames into the running nodes and record what they publish.

  chatrex-ros up &                                          # the nodes, in namespace /chatrex
  chatrex-ros replay --bag BAG --step --gt GT.json --queries Q.json --record REC
  chatrex-ros eval --answers REC --gt GT.json --queries Q.json --out results

Images are published on the bag's topic (or --image-out) with their recorded headers, timed like the bag
divided by --rate, with /clock. --gt asks the evaluation queries about every annotated frame (ids
eval-detect/<image id>, eval-refer/<query id>), so `eval --answers` can score the recording; --ask asks one
detect query about every frame. --step publishes the next frame only when the previous one has its
proposals and all its answers (queries asked one at a time), so a slow model never drops frames.

Exit status: 0 done (in timed mode frames the nodes skipped are measured and reported, not an error);
1 a step-mode frame timed out or the subscribers went away; 2 bad input (missing topic, corrupt bag,
nothing listening); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from chatrex_ros.commands.exit_codes import ExitCode
from chatrex_ros.names import GRAPH_NAMESPACE


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``replay`` subcommand."""
    parser = subparsers.add_parser(
        "replay",
        help="play a bag into the running nodes and record their outputs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("input")
    source.add_argument("--bag", type=Path, required=True, help="rosbag2 (directory, .mcap or .db3) with the images")
    source.add_argument("--image-topic", help="image topic of the bag (default: its only colour image topic)")
    source.add_argument("--max-frames", type=int, help="replay only the first N images")
    queries = parser.add_argument_group("queries (optional; without them only proposals are awaited)")
    queries.add_argument("--gt", type=Path, help="COCO ground truth with images[].stamp_ns: ask the evaluation queries")
    queries.add_argument("--gt-topic", help="read the ground truth from this Answer topic of the bag instead")
    queries.add_argument("--queries", type=Path, help="referring queries JSON for --gt ({queries: [...]})")
    queries.add_argument(
        "--stamp-tolerance-ms",
        type=float,
        default=0.0,
        help="match ground-truth stamps within this many ms (default exact)",
    )
    queries.add_argument(
        "--ask",
        default="",
        metavar="PHRASES",
        help="also ask 'detect PHRASES' about every frame, e.g. 'cup; the red mug'",
    )
    timing = parser.add_argument_group("timing")
    timing.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    timing.add_argument(
        "--step",
        action="store_true",
        help="publish the next frame only after the previous one's proposals and answers arrived",
    )
    timing.add_argument(
        "--frame-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="step mode: the longest one frame may take (proposals + all answers), then it is "
        "reported and the replay moves on (default 120)",
    )
    timing.add_argument(
        "--drain",
        type=float,
        default=10.0,
        metavar="S",
        help="timed mode: how long to wait for outputs still in flight after the last frame (default 10)",
    )
    timing.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="S",
        help="how long to wait for the nodes to appear before giving up (default 10)",
    )
    timing.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="S",
        help="once the nodes are there, wait this long before the first frame, with /clock held at its time "
        "(time for late subscribers such as a recorder or RViz to match; default 0)",
    )
    timing.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    timing.add_argument("--clock-hz", type=float, default=50.0, help="/clock publication rate (default 50)")
    graph = parser.add_argument_group("graph")
    graph.add_argument(
        "--namespace",
        default=GRAPH_NAMESPACE,
        help=f"namespace of the nodes' topics (default {GRAPH_NAMESPACE})",
    )
    graph.add_argument("--image-out", help="publish the images on this topic instead of the bag's topic name")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--record", type=Path, metavar="OUT", help="record images, queries, proposals and answers into this new bag"
    )
    output.add_argument(
        "--storage", choices=("mcap", "sqlite3"), default="mcap", help="storage of --record (default mcap)"
    )
    output.add_argument(
        "--no-record-images",
        action="store_true",
        help="leave the images out of --record (then pass --bag to eval --answers)",
    )
    output.add_argument("--summary-json", type=Path, help="also write the replay report as JSON here")
    parser.set_defaults(func=run)


def _load_ground_truth(args: argparse.Namespace) -> tuple[Any, tuple[Any, ...]]:
    from chatrex_ros.eval.bagio import BagReader
    from chatrex_ros.eval.groundtruth import GroundTruth, load_queries

    if args.gt is not None and args.gt_topic is not None:
        raise ValueError("give at most one of --gt GT.json and --gt-topic TOPIC")
    if args.queries is not None and args.gt is None and args.gt_topic is None:
        raise ValueError("--queries needs the ground truth it refers to: add --gt GT.json (or --gt-topic)")
    if args.gt is not None:
        gt = GroundTruth.load(args.gt)
    elif args.gt_topic is not None:
        with BagReader(args.bag) as reader:
            gt = reader.ground_truth(args.gt_topic)
    else:
        return None, ()
    return gt, (load_queries(args.queries, gt) if args.queries else ())


def run(args: argparse.Namespace) -> int:
    """Plan the replay, play it into the running graph, print (and write) its report; the exit status."""
    from chatrex_ros.eval.groundtruth import stamp_tolerance_ns
    from chatrex_ros.launcher import dds_environment
    from chatrex_ros.replay.options import ReplayOptions
    from chatrex_ros.replay.plan import plan_replay
    from chatrex_ros.replay.publisher import run_replay

    try:
        options = ReplayOptions(
            rate=args.rate,
            step=args.step,
            namespace=args.namespace,
            image_out=args.image_out,
            record=args.record,
            storage=args.storage,
            record_images=not args.no_record_images,
            clock=not args.no_clock,
            clock_hz=args.clock_hz,
            wait_s=args.wait,
            delay_s=args.delay,
            frame_timeout_s=args.frame_timeout,
            drain_s=args.drain,
        )
        options.validate()  # before reading a long bag
        gt, referring = _load_ground_truth(args)
        plan = plan_replay(
            args.bag,
            args.image_topic,
            gt,
            referring,
            args.ask,
            stamp_tolerance_ns(args.stamp_tolerance_ms),
            args.max_frames,
        )
    except (ValueError, FileNotFoundError, ImportError) as error:
        return _fail(error)
    print(
        f"replaying {len(plan.frames)} frames of {plan.image_topic} ({plan.query_count} queries)"
        f"{' in step mode' if args.step else f' at rate {args.rate:g}'}",
        file=sys.stderr,
        flush=True,
    )
    os.environ.update(dds_environment())  # the same big-SHM profile as `chatrex-ros up`, before rclpy starts
    try:
        report = run_replay(plan, options, log=_say)
    except (ValueError, FileNotFoundError, ImportError) as error:
        return _fail(error)
    print(report.format_table())
    if args.summary_json is not None:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    if report.stopped.startswith("interrupted"):
        return ExitCode.INTERRUPTED
    return ExitCode.FAILED if report.stopped or report.timeouts else ExitCode.OK


def _say(line: str) -> None:
    print(f"chatrex-ros replay: {line}", file=sys.stderr, flush=True)


def _fail(error: BaseException) -> int:
    print(f"chatrex-ros replay: error: {error}", file=sys.stderr)
    return ExitCode.BAD_INPUT
