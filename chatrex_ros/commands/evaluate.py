"""`chatrex-ros eval | make-sample | demo`: offline evaluation from rosbags, the sample bag, the main demo.

* ``eval --bag BAG --gt GT.json [--queries Q.json] [--out DIR]``: run the proposal and language backends
  on the bag's images and score them (``--answers REC`` scores a bag recorded from the running nodes; a
  recording without any OK answer, e.g. from a graph without a language model, reports detection and
  referring as not available, with the answer statuses, rather than as zeros).
* ``make-sample --out DIR``: the sample bag from scikit-image photographs with hand-made annotations.
* ``demo``: make the sample bag if needed, evaluate it with the default (weight-free) backends, print
  the report and write metrics.json, report.md and plots.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from chatrex_ros.commands.exit_codes import ExitCode
from chatrex_ros.names import GROUND_TRUTH_TOPIC


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval``, ``make-sample`` and ``demo`` subcommands."""
    evaluate = subparsers.add_parser(
        "eval",
        help="score the pipeline (or recorded answers) on a rosbag",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = evaluate.add_argument_group("input")
    source.add_argument("--bag", type=Path, help="rosbag2 (directory, .mcap or .db3) with the images")
    source.add_argument(
        "--answers",
        type=Path,
        metavar="REC",
        help="score a bag recorded from the running nodes (Answer/ProposalArray topics) instead of running models",
    )
    source.add_argument(
        "--gt", type=Path, help="COCO ground truth with images[].stamp_ns (see chatrex_ros.eval.groundtruth)"
    )
    source.add_argument(
        "--gt-topic",
        help=f"read the ground truth from this Answer topic of the bag instead (e.g. {GROUND_TRUTH_TOPIC})",
    )
    source.add_argument(
        "--queries", type=Path, help="referring queries JSON: {queries: [{id, image_id, phrase, annotation_id}]}"
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
        "--out", type=Path, default=Path("chatrex_eval"), help="output directory (default ./chatrex_eval)"
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
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    output.add_argument("--quiet", action="store_true", help="do not print the report")


def parse_params(items: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE strings -> keywords; values become bool/int/float when they look like one."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE with KEY a Python identifier")
        params[key.strip()] = _literal(value)
    return params


def _literal(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _build_models(args: argparse.Namespace) -> tuple[Any, Any]:
    """Backends from the config file's node sections (as the nodes build them), flags taking precedence."""
    from chatrex_ros.models.base import ProposalPipeline
    from chatrex_ros.models.registry import make_language_backend, make_proposal_backend
    from chatrex_ros.models.settings import language_backend_kwargs, proposal_backend_kwargs, selection_policy
    from chatrex_ros.node_parameters import LanguageNodeParams, ProposalNodeParams, resolved
    from chatrex_ros.parameters import node_section
    from chatrex_ros.paths import config_file

    config = args.config or config_file("chatrex.yaml")
    proposal_values = node_section(config, "proposal_node")
    language_values = node_section(config, "language_node")
    for flag, key in (
        ("proposal_backend", "backend"),
        ("min_score", "min_score"),
        ("nms_iou", "nms_iou"),
        ("max_proposals", "max_proposals"),
    ):
        if getattr(args, flag) is not None:
            proposal_values[key] = getattr(args, flag)
    if args.language_backend is not None:
        language_values["language_backend"] = args.language_backend
    if args.model_path:
        language_values["model_path"] = args.model_path
    proposal_params = resolved(ProposalNodeParams, proposal_values)
    language_params = resolved(LanguageNodeParams, language_values)
    proposal_kwargs = {
        **proposal_backend_kwargs(proposal_params),
        **parse_params(args.proposal_param, "--proposal-param"),
    }
    proposal = make_proposal_backend(proposal_params.backend, **proposal_kwargs)
    extra_language = parse_params(args.language_param, "--language-param")
    if language_params.language_backend == "none" and (extra_language or args.model_path):
        raise ValueError(
            "--model-path/--language-param given but the language backend is 'none'; add --language-backend chatrex"
        )
    language_kwargs = {**language_backend_kwargs(language_params), **extra_language}
    language = make_language_backend(language_params.language_backend, **language_kwargs)
    return ProposalPipeline(proposal, selection_policy(proposal_params)), language


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
    """`eval`: score the models on a bag's images, or recorded answers, and write the report."""
    from chatrex_ros.eval.bagio import BagReader
    from chatrex_ros.eval.groundtruth import GroundTruth, load_queries, stamp_tolerance_ns
    from chatrex_ros.eval.offline import evaluate_bag
    from chatrex_ros.eval.recorded import evaluate_recorded

    try:
        if args.bag is None and args.answers is None:
            raise ValueError("give --bag BAG (run the models on its images) or --answers REC (score recorded answers)")
        if (args.gt is None) == (args.gt_topic is None):
            raise ValueError("give exactly one of --gt GT.json or --gt-topic TOPIC")
        tolerance_ns = stamp_tolerance_ns(args.stamp_tolerance_ms)
        if args.gt is not None:
            gt = GroundTruth.load(args.gt)
        else:
            with BagReader(args.bag or args.answers) as reader:
                gt = reader.ground_truth(args.gt_topic, None)
        queries = load_queries(args.queries, gt) if args.queries else ()
        if args.answers is not None:
            result = evaluate_recorded(
                args.answers,
                gt,
                queries,
                args.answer_topic,
                args.proposal_topic,
                args.image_topic,
                args.bag,
                tolerance_ns,
            )
            answers = result.metrics.get("answers", {})
            if not answers.get("available", True):  # said even with --quiet: the numbers the user came for
                print(
                    f"chatrex-ros eval: detection/referring metrics not available: {answers['reason']}", file=sys.stderr
                )
        else:
            pipeline, language = _build_models(args)
            result = evaluate_bag(
                args.bag,
                gt,
                pipeline,
                language,
                queries,
                args.image_topic,
                tolerance_ns,
                args.max_frames,
                progress=not args.no_progress,
            )
        return _finish(result, args)
    except (ValueError, FileNotFoundError, ImportError, TypeError, RuntimeError) as error:  # RemoteCodeRefused too
        return _fail("eval", error)


def run_make_sample(args: argparse.Namespace) -> int:
    """`make-sample`: write the sample bag, with copies of its annotations and queries beside it."""
    from chatrex_ros.eval.sample import make_sample_bag, sample_annotations_path, sample_queries_path

    try:
        bag = make_sample_bag(args.out, args.storage, args.with_gt_topic, overwrite=args.force)
    except (ValueError, FileNotFoundError, ImportError) as error:
        return _fail("make-sample", error)
    # Copies beside the bag, so the next commands can name them relative to where the user is.
    annotations = Path(f"{Path(args.out)}_annotations.json")
    queries = Path(f"{Path(args.out)}_queries.json")
    shutil.copyfile(sample_annotations_path(), annotations)
    shutil.copyfile(sample_queries_path(), queries)
    print(f"sample bag: {bag} ({args.storage}, topic /camera/image_raw)")
    print(f"ground truth: {annotations}")
    print(f"queries: {queries}")
    return ExitCode.OK


def run_demo(args: argparse.Namespace) -> int:
    """`demo`: evaluate the sample bag (made if needed) with the configured backends and write the report."""
    from chatrex_ros.eval.groundtruth import GroundTruth, load_queries
    from chatrex_ros.eval.offline import evaluate_bag
    from chatrex_ros.eval.sample import ensure_sample_bag, sample_annotations_path, sample_queries_path

    try:
        bag = ensure_sample_bag(args.sample_bag or args.out / "sample_bag", args.storage)
        gt = GroundTruth.load(sample_annotations_path())
        queries = load_queries(sample_queries_path(), gt)
        pipeline, language = _build_models(args)
        result = evaluate_bag(
            bag, gt, pipeline, language, queries, max_frames=args.max_frames, progress=not args.no_progress
        )
        return _finish(result, args)
    except (ValueError, FileNotFoundError, ImportError, TypeError) as error:
        return _fail("demo", error)
