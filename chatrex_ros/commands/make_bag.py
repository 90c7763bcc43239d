"""`chatrex-ros make-bag`: a COCO-format dataset (and RefCOCO-style refs) into a rosbag2 plus its ground truth.

``make-bag --images DIR --annotations instances.json --out BAG [--refs refs.json] [--negatives N]`` writes
BAG (mcap or sqlite3) with one image per dataset image, ``BAG_annotations.json`` (the dataset's ground truth
with ``stamp_ns`` per image written) and, with refs or negatives, ``BAG_queries.json``; then
``chatrex-ros eval --bag BAG --gt BAG_annotations.json [--queries BAG_queries.json]`` scores it. Missing or
unreadable images are skipped with a warning (``--strict``: stop instead). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chatrex_ros.commands.exit_codes import ExitCode


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``make-bag`` subcommand."""
    parser = subparsers.add_parser(
        "make-bag",
        help="convert a COCO-format dataset (and RefCOCO-style refs) into a rosbag2 and its ground truth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("input")
    source.add_argument("--images", type=Path, required=True, help="directory the file_name entries are under")
    source.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    source.add_argument(
        "--refs",
        type=Path,
        help='RefCOCO-style refs JSON: a list (or {"refs": [...]}) of {ann_id, image_id, sentences: [{sent}]}',
    )
    source.add_argument("--limit", type=int, metavar="N", help="write at most N images (missing ones do not count)")
    source.add_argument("--shuffle", action="store_true", help="shuffle the image order (default: the file's)")
    source.add_argument("--seed", type=int, default=0, help="seed of --shuffle and --negatives (default 0)")
    source.add_argument(
        "--negatives",
        type=int,
        default=0,
        metavar="N",
        help="per image, up to N absent category names as target-less queries (default 0)",
    )
    source.add_argument("--strict", action="store_true", help="fail at the first missing or unreadable image")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, required=True, help="bag directory to create")
    output.add_argument("--gt-out", type=Path, help="ground truth JSON (default <out>_annotations.json)")
    output.add_argument("--queries-out", type=Path, help="queries JSON (default <out>_queries.json)")
    output.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage (default mcap)")
    # Defaults not given here (None) are MakeBagOptions' own: one source, and building the parser imports nothing.
    output.add_argument("--topic", help="image topic (default /camera/image_raw)")
    output.add_argument("--frame-id", help="header frame_id (default camera)")
    output.add_argument("--rate", type=float, metavar="HZ", help="stamps 1/HZ apart; log time = stamp (default 10)")
    output.add_argument(
        "--encoding",
        choices=("rgb8", "jpeg"),
        help="rgb8: sensor_msgs/Image; jpeg: sensor_msgs/CompressedImage (default rgb8)",
    )
    output.add_argument("--jpeg-quality", type=int, help="0..100 (default 90)")
    output.add_argument("--force", action="store_true", help="replace an existing bag and JSON outputs")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_make_bag)


def run_make_bag(args: argparse.Namespace) -> int:
    """`make-bag`: convert, print the summary paragraph; bad input is one line on stderr and exit status 2."""
    from chatrex_ros.eval.make_bag import MakeBagOptions, make_bag

    optional = {"topic": args.topic, "frame_id": args.frame_id, "rate_hz": args.rate, "encoding": args.encoding}
    optional["jpeg_quality"] = args.jpeg_quality
    options = MakeBagOptions(
        images=args.images,
        annotations=args.annotations,
        out=args.out,
        refs=args.refs,
        gt_out=args.gt_out,
        queries_out=args.queries_out,
        storage=args.storage,
        limit=args.limit,
        shuffle=args.shuffle,
        seed=args.seed,
        negatives=args.negatives,
        strict=args.strict,
        overwrite=args.force,
        progress=not args.no_progress,
        **{key: value for key, value in optional.items() if value is not None},
    )
    try:
        summary = make_bag(options)
    except KeyboardInterrupt:
        print("chatrex-ros make-bag: interrupted; the partial bag was removed", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"chatrex-ros make-bag: error: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except OSError as error:  # a full disk, a read-only output directory
        print(f"chatrex-ros make-bag: failed: {error}", file=sys.stderr)
        return ExitCode.FAILED
    print(summary.paragraph())
    return ExitCode.OK
