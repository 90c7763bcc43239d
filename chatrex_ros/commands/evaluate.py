"""`chatrex-ros eval | make-sample | demo`: offline evaluation from rosbags, the sample bag, the main demo.

* ``eval --bag BAG --gt GT.json [--queries Q.json] [--out DIR]``: run the proposal and language backends
  on the bag's images and score them (``--answers REC`` scores a bag recorded from the running nodes; a
  recording without any OK answer, e.g. from a graph without a language model, reports detection and
  referring as not available, with the answer statuses, rather than as zeros).
* ``eval --bag BAG1 BAG2 ... | DIR_OF_BAGS [--workers N | --executor ray]``: many bags, each with the
  ``<bag>_annotations.json`` (and ``<bag>_queries.json``) beside it, in N processes or as Ray tasks; the
  records of all bags are scored together (pooled), with a section per bag (see chatrex_ros.eval.bags).
* ``eval --compare RUN_DIR RUN_DIR ...``: the metrics.json of several runs side by side, with plots.
* ``make-sample --out DIR``: the sample bag from scikit-image photographs with hand-made annotations.
* ``demo``: make the sample bag if needed, evaluate it with the default (weight-free) backends, print
  the report and write metrics.json, report.md and plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from chatrex_ros.commands.exit_codes import ExitCode
from chatrex_ros.eval.backends import parse_params
from chatrex_ros.names import GROUND_TRUTH_TOPIC

EXECUTORS = ("process", "ray")  # chatrex_ros.eval.parallel.EXECUTORS, without importing it to build the parser
__all__ = ["parse_params", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval``, ``make-sample`` and ``demo`` subcommands."""
    evaluate = subparsers.add_parser(
        "eval",
        help="score the pipeline (or recorded answers) on a rosbag",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = evaluate.add_argument_group("input")
    source.add_argument(
        "--bag",
        type=Path,
        nargs="+",
        help="rosbag2 (directory, .mcap or .db3) with the images; several bags, or a directory of bags, are "
        "evaluated together (ground truth: <bag>_annotations.json beside each)",
    )
    source.add_argument(
        "--answers",
        type=Path,
        metavar="REC",
        help="score a bag recorded from the running nodes (Answer/ProposalArray topics) instead of running models",
    )
    source.add_argument(
        "--gt",
        type=Path,
        help="COCO ground truth with images[].stamp_ns (see chatrex_ros.eval.groundtruth); default: "
        "<bag>_annotations.json beside the bag",
    )
    source.add_argument(
        "--gt-topic",
        help=f"read the ground truth from this Answer topic of the bag instead (e.g. {GROUND_TRUTH_TOPIC})",
    )
    source.add_argument(
        "--queries",
        type=Path,
        help="referring queries JSON: {queries: [{id, image_id, phrase, annotation_id}]}; without --gt: "
        "<bag>_queries.json beside the bag when it exists",
    )
    source.add_argument("--image-topic", help="image topic (default: the bag's only colour image topic)")
    source.add_argument("--answer-topic", help="Answer topic of --answers (default: its only Answer topic)")
    source.add_argument("--proposal-topic", help="ProposalArray topic of --answers (default: its only one)")
    source.add_argument(
        "--stamp-tolerance-ms",
        type=float,
        default=0.0,
        help="match ground-truth stamps to image stamps within this many ms (default exact)",
    )
    evaluate.add_argument(
        "--out", type=Path, help="output directory (default ./chatrex_eval; with --compare ./chatrex_compare)"
    )
    many = evaluate.add_argument_group("many bags (docs/evaluation.md#many-bags-and-workers)")
    many.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="evaluate the bags in N worker processes (default 1: in this process; with --executor ray: "
        "at most N tasks at once)",
    )
    many.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="process",
        help="process: this machine's processes (default); ray: Ray tasks (pip install 'chatrex_ros[ray]')",
    )
    many.add_argument(
        "--ray-address", metavar="ADDR", help="Ray cluster to use with --executor ray (default: a local instance)"
    )
    evaluate.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="put the metrics.json of these evaluation output directories side by side (tables, plots in --out)",
    )
    _add_run_arguments(evaluate)
    evaluate.set_defaults(func=run_eval)

    sample = subparsers.add_parser(
        "make-sample", help="write the sample bag (scikit-image photographs, hand-made annotations)"
    )
    sample.add_argument("--out", type=Path, default=Path("chatrex_sample_bag"), help="bag directory to create")
    sample.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    sample.add_argument(
        "--with-gt-topic", action="store_true", help=f"also write the annotations on {GROUND_TRUTH_TOPIC}"
    )
    sample.add_argument("--force", action="store_true", help="replace --out if it exists")
    sample.set_defaults(func=run_make_sample)

    demo = subparsers.add_parser("demo", help="evaluate the sample bag end to end and print the report")
    demo.add_argument(
        "--out", type=Path, default=Path("chatrex_demo"), help="output directory (default ./chatrex_demo)"
    )
    demo.add_argument("--sample-bag", type=Path, help="where the sample bag is cached (default OUT/sample_bag)")
    demo.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    _add_run_arguments(demo)
    demo.set_defaults(func=run_demo)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group(
        "models (the same backends and config the nodes use; flags override the config file)"
    )
    models.add_argument(
        "--config",
        type=Path,
        help="ROS params file whose proposal_node/language_node sections pick the backends "
        "(default: the package's config/chatrex.yaml)",
    )
    models.add_argument(
        "--proposal-backend", help="selective_search | torch | onnxruntime | tensorrt | python:module:Class"
    )
    models.add_argument(
        "--proposal-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="proposal backend constructor keyword, e.g. checkpoint=upn_large.pth (repeatable)",
    )
    models.add_argument("--language-backend", help="none | chatrex | openai | python:module:Class")
    models.add_argument("--model-path", help="ChatRex-7B directory (passed as model_path=)")
    models.add_argument(
        "--language-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="language backend constructor keyword, e.g. device=cpu (repeatable)",
    )
    models.add_argument("--min-score", type=float, help="proposal score threshold (config default 0.3)")
    models.add_argument("--nms-iou", type=float, help="proposal NMS IoU (config default 0.8)")
    models.add_argument("--max-proposals", type=int, help="top-K proposals given to the model (config default 100)")
    output = parser.add_argument_group("output")
    output.add_argument("--max-frames", type=int, help="evaluate only the first N matched frames")
    output.add_argument(
        "--count-queries",
        action="store_true",
        help="also ask a count query per frame and category present (count accuracy; offline only)",
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    output.add_argument("--quiet", action="store_true", help="do not print the report")


def _build_models(args: argparse.Namespace) -> tuple[Any, Any]:
    """Backends from the config file's node sections (as the nodes build them), flags taking precedence."""
    from chatrex_ros.eval.backends import ModelSpec

    return ModelSpec.from_args(args).build()


def _fail(command: str, error: BaseException) -> int:
    print(f"chatrex-ros {command}: error: {error}", file=sys.stderr)
    return ExitCode.BAD_INPUT if isinstance(error, (ValueError, FileNotFoundError)) else ExitCode.FAILED


def _finish(result: Any, args: argparse.Namespace) -> int:
    from chatrex_ros.eval.report import write_outputs

    written = write_outputs(result, args.out, plots=not args.no_plots)
    if not args.quiet:
        print(written["report"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    return ExitCode.OK


def run_eval(args: argparse.Namespace) -> int:
    """`eval`: score the models on a bag's images (or many bags'), recorded answers, or compare runs."""
    from chatrex_ros.eval.bagio import BagReader
    from chatrex_ros.eval.bags import ANNOTATIONS_SUFFIX, QUERIES_SUFFIX, is_bag_folder, sidecar
    from chatrex_ros.eval.groundtruth import GroundTruth, load_queries, stamp_tolerance_ns
    from chatrex_ros.eval.offline import evaluate_bag
    from chatrex_ros.eval.recorded import evaluate_recorded

    try:
        if args.compare:
            return _run_compare(args)
        args.out = args.out or Path("chatrex_eval")
        bags: list[Path] = list(args.bag or [])
        if not bags and args.answers is None:
            raise ValueError("give --bag BAG (run the models on its images) or --answers REC (score recorded answers)")
        if args.gt is not None and args.gt_topic is not None:
            raise ValueError("give exactly one of --gt GT.json or --gt-topic TOPIC")
        many = args.answers is None and (
            len(bags) > 1 or is_bag_folder(bags[0]) or args.workers is not None or args.executor != "process"
        )
        if args.answers is not None and (len(bags) > 1 or args.workers is not None or args.executor != "process"):
            raise ValueError(
                "--answers scores one recording: at most one --bag (its input bag), no --workers/--executor"
            )
        tolerance_ns = stamp_tolerance_ns(args.stamp_tolerance_ms)
        for path in [*bags, *([args.answers] if args.answers is not None else [])]:
            if not Path(path).exists():  # before the ground-truth rules, whose message would point elsewhere
                raise ValueError(f"bag {path} does not exist")
        if many:
            return _run_many(args, bags, tolerance_ns)
        bag = bags[0] if bags else None
        queries_file = args.queries
        if args.gt is not None:
            gt = GroundTruth.load(args.gt)
        elif args.gt_topic is not None:
            with BagReader(bag or args.answers) as reader:
                gt = reader.ground_truth(args.gt_topic, None)
        elif args.answers is None and bag is not None and sidecar(bag, ANNOTATIONS_SUFFIX).is_file():
            gt = GroundTruth.load(sidecar(bag, ANNOTATIONS_SUFFIX))  # the files make-sample writes beside a bag
            if queries_file is None and sidecar(bag, QUERIES_SUFFIX).is_file():
                queries_file = sidecar(bag, QUERIES_SUFFIX)
        else:
            beside = f" (or put it at {sidecar(bag, ANNOTATIONS_SUFFIX)})" if args.answers is None and bag else ""
            raise ValueError(f"give exactly one of --gt GT.json or --gt-topic TOPIC{beside}")
        queries = load_queries(queries_file, gt) if queries_file else ()
        if args.answers is not None:
            result = evaluate_recorded(
                args.answers,
                gt,
                queries,
                args.answer_topic,
                args.proposal_topic,
                args.image_topic,
                bag,
                tolerance_ns,
                queries_file,
            )
            answers = result.metrics.get("answers", {})
            if not answers.get("available", True):  # said even with --quiet: the numbers the user came for
                print(
                    f"chatrex-ros eval: detection/referring metrics not available: {answers['reason']}", file=sys.stderr
                )
        else:
            pipeline, language = _build_models(args)
            assert bag is not None  # not --answers: a bag was given
            result = evaluate_bag(
                bag,
                gt,
                pipeline,
                language,
                queries,
                args.image_topic,
                tolerance_ns,
                args.max_frames,
                progress=not args.no_progress,
                count_queries=args.count_queries,
                queries_file=queries_file,
            )
        return _finish(result, args)
    except (ValueError, FileNotFoundError, ImportError, TypeError, RuntimeError) as error:  # RemoteCodeRefused too
        return _fail("eval", error)


def _run_many(args: argparse.Namespace, bags: list[Path], tolerance_ns: int) -> int:
    """Many bags: evaluated by the chosen executor, pooled; a section and an output directory per bag.

    Exit status 1 when a bag failed (the others are scored and reported), after naming each failure.
    """
    from chatrex_ros.eval.backends import ModelSpec
    from chatrex_ros.eval.bags import discover_bags, plan_jobs
    from chatrex_ros.eval.parallel import evaluate_bags
    from chatrex_ros.eval.pooling import bags_markdown
    from chatrex_ros.eval.report import REPORT_FILE, write_outputs

    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
    jobs = plan_jobs(
        discover_bags(bags),
        args.gt,
        args.gt_topic,
        args.queries,
        args.image_topic,
        tolerance_ns,
        args.max_frames,
        args.count_queries,
    )
    done = evaluate_bags(
        jobs, ModelSpec.from_args(args), args.executor, args.workers, args.ray_address, progress=not args.no_progress
    )
    written = write_outputs(done.result, args.out, plots=not args.no_plots)
    report = written["report"]
    report.write_text(report.read_text(encoding="utf-8") + bags_markdown(done.result.bags), encoding="utf-8")
    for outcome in done.outcomes:
        if outcome.result is not None:  # each bag's own metrics.json and report.md (no plots: the pooled have them)
            write_outputs(outcome.result, args.out / "bags" / outcome.job.label, plots=False)
    if not args.quiet:
        print(report.read_text(encoding="utf-8"))
    per_bag = args.out / "bags" / "<bag>"
    print(f"wrote {', '.join(str(p) for p in written.values())}; per bag {per_bag}/{REPORT_FILE}", file=sys.stderr)
    for outcome in done.failures:
        print(f"chatrex-ros eval: bag {outcome.job.bag} failed: {outcome.error}", file=sys.stderr)
    return ExitCode.FAILED if done.failures else ExitCode.OK


def _run_compare(args: argparse.Namespace) -> int:
    """`eval --compare RUN ...`: the runs' headline and per-class metrics side by side, tables and plots."""
    from chatrex_ros.eval.compare import compare_runs, write_comparison

    if args.bag or args.answers:
        raise ValueError("--compare reads finished runs: give it no --bag/--answers")
    comparison = compare_runs(args.compare)
    written = write_comparison(comparison, args.out or Path("chatrex_compare"), plots=not args.no_plots)
    if not args.quiet:
        print(written["table"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    return ExitCode.OK


def run_make_sample(args: argparse.Namespace) -> int:
    """`make-sample`: write the sample bag, with copies of its annotations and queries beside it."""
    from chatrex_ros.eval.sample import make_sample_bag, write_sample_sidecars

    try:
        bag = make_sample_bag(args.out, args.storage, args.with_gt_topic, overwrite=args.force)
    except (ValueError, FileNotFoundError, ImportError) as error:
        return _fail("make-sample", error)
    annotations, queries = write_sample_sidecars(bag)
    print(f"sample bag: {bag} ({args.storage}, topic /camera/image_raw)")
    print(f"ground truth: {annotations}")
    print(f"queries: {queries}")
    return ExitCode.OK


def run_demo(args: argparse.Namespace) -> int:
    """`demo`: evaluate the sample bag (made if needed) with the configured backends and write the report."""
    from chatrex_ros.eval.groundtruth import GroundTruth, load_queries
    from chatrex_ros.eval.offline import evaluate_bag
    from chatrex_ros.eval.sample import ensure_sample_bag, write_sample_sidecars

    try:
        bag = ensure_sample_bag(args.sample_bag or args.out / "sample_bag", args.storage)
        # Beside the bag, as after make-sample: the report names them and `eval --bag <bag>` finds them.
        annotations, queries_file = write_sample_sidecars(bag)
        gt = GroundTruth.load(annotations)
        queries = load_queries(queries_file, gt)
        pipeline, language = _build_models(args)
        result = evaluate_bag(
            bag,
            gt,
            pipeline,
            language,
            queries,
            max_frames=args.max_frames,
            progress=not args.no_progress,
            queries_file=queries_file,
        )
        return _finish(result, args)
    except (ValueError, FileNotFoundError, ImportError, TypeError) as error:
        return _fail("demo", error)
