"""`chatrex-ros ask "the red mug"`: publish a Query, wait for its Answer, print it (a table, or --json).

The answer's image stamp is printed as exact decimal seconds (image_stamp, nine fraction digits) and
--stamp reads that same text back to the nanosecond, so `ask --stamp <printed image_stamp>` asks about
the very frame the previous answer was about (the language node pairs stamps exactly).

With --action the query goes to the language node's ``ask`` action instead of the topic: its stages
(queued with the queue position, waiting for the frame, generating) are printed to stderr as they come, and
Ctrl-C cancels the goal.

Exit status: 0 answer OK, 1 error status, 2 usage error, 3 timeout (no answer, or status TIMEOUT),
4 no language_node found on the query/answer topics within --wait-for-node seconds.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from chatrex_ros.commands.exit_codes import ExitCode
from chatrex_ros.core.protocol import Task
from chatrex_ros.core.stamps import format_stamp, parse_stamp, stamp_to_ns
from chatrex_ros.names import GRAPH_NAMESPACE

QUERY_TYPE = "chatrex_ros/msg/Query"
SPIN_S = 0.05
CANCEL_WAIT_S = 10.0  # for the cancel's response, then again for the goal's CANCELED result


def parse_indices(text: str) -> list[int]:
    """``"3,5"`` -> ``[3, 5]``; argparse turns the ValueError into a usage error (exit 2)."""
    try:
        indices = [int(item) for item in text.replace(";", ",").split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected proposal indices like 3,5; got {text!r}") from None
    if any(index < 0 for index in indices):
        raise argparse.ArgumentTypeError(f"proposal indices are >= 0; got {text!r}")
    return indices


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ask`` subcommand to the main CLI's subparsers."""
    parser = subparsers.add_parser(
        "ask",
        help="ask the running language_node a question",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("text", help="target phrase(s) for detect/count ('a; b'), the question for chat")
    parser.add_argument(
        "--task",
        default="detect",
        choices=[task.value for task in Task],
        metavar="TASK",
        help=f"one of {', '.join(task.value for task in Task)} (default detect)",
    )
    parser.add_argument("--indices", default=[], type=parse_indices, help="proposal indices for region tasks, e.g. 3,5")
    parser.add_argument(
        "--stamp",
        type=stamp_argument,
        default=0,
        metavar="SEC[.NANOS]",
        help="exact image stamp to ask about, as a previous answer printed it (image_stamp); default: the newest frame",
    )
    parser.add_argument(
        "--timeout",
        type=seconds_argument(allow_zero=False),
        default=60.0,
        metavar="SECONDS",
        help="seconds to wait for the answer once the query is sent (default 60)",
    )
    parser.add_argument(
        "--wait-for-node",
        type=seconds_argument(allow_zero=True),
        default=5.0,
        metavar="SECONDS",
        help="seconds to wait for a language_node on the query/answer topics before giving up "
        "with exit status 4 (default 5)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=0)
    parser.add_argument(
        "--namespace",
        default=GRAPH_NAMESPACE,
        help="namespace of the language_node topics (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument(
        "--action",
        action="store_true",
        help="send the query as a goal of the node's `ask` action: stages shown as they come, Ctrl-C cancels it",
    )
    parser.set_defaults(func=run)


def stamp_argument(text: str) -> int:
    """Argparse type for --stamp: :func:`parse_stamp`, its message kept, so a bad value is a usage error (2)."""
    try:
        return parse_stamp(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def seconds_argument(allow_zero: bool) -> Callable[[str], float]:
    """Argparse type for a duration: a finite float, > 0 (or >= 0), refused at parse time rather than hanging."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds {bound}")
        return value

    parse.__name__ = "seconds"
    return parse


def topic_names(namespace: str) -> tuple[str, str, str]:
    """(namespace as shown, query topic, answer topic): '/chatrex', 'chatrex/' and '/' all normalise."""
    stripped = namespace.strip("/")
    prefix = f"/{stripped}" if stripped else ""
    return prefix or "/", f"{prefix}/query", f"{prefix}/answer"


def answer_to_dict(answer: Any) -> dict[str, Any]:
    """An Answer message as the JSON ``ask --json`` prints; ``image_stamp`` is exact (feed it to --stamp)."""
    from chatrex_ros.core.answering import status_name

    stamp_ns = stamp_to_ns(answer.header.stamp)
    return {
        "query_id": answer.query_id,
        "task": answer.task,
        "status": status_name(answer.status),
        "status_message": answer.status_message,
        "text": answer.text,
        "raw_output": answer.raw_output,
        "question": answer.question,
        "image_stamp": format_stamp(stamp_ns),
        "image_stamp_ns": stamp_ns,
        "frame_id": answer.header.frame_id,
        "num_proposals": answer.num_proposals,
        "detections": [
            {
                "index": d.proposal_index,
                "label": d.label,
                "box": [round(float(v), 2) for v in d.box],
                "score": round(float(d.score), 4),
            }
            for d in answer.detections
        ],
        "timings_ms": {"queue": answer.queue_ms, "model": answer.model_ms, "total": answer.total_ms},
    }


def format_table(summary: dict[str, Any]) -> str:
    """The human-readable form of :func:`answer_to_dict`'s summary: status, answer, stamp, detections, timings."""
    lines = [
        f"status: {summary['status']}" + (f" ({summary['status_message']})" if summary["status_message"] else ""),
        f"answer: {summary['text']}",
    ]
    if summary["image_stamp_ns"] and summary["status"] == "OK":
        stamp, frame = summary["image_stamp"], f", frame_id {summary['frame_id']}" if summary["frame_id"] else ""
        lines.append(f"image stamp: {stamp}{frame} (ask about it again with --stamp {stamp})")
    elif summary["image_stamp_ns"]:
        lines.append(f"image stamp: {summary['image_stamp']} (asked about; not answered)")
    else:
        lines.append("image stamp: none (no frame was answered about)")
    if summary["detections"]:
        lines.append(f"{'index':>5}  {'label':<24} {'score':>6}  box (x1 y1 x2 y2)")
        for d in summary["detections"]:
            box = " ".join(f"{v:.1f}" for v in d["box"])
            lines.append(f"{d['index']:>5}  {d['label'][:24]:<24} {d['score']:>6.3f}  {box}")
    timings = summary["timings_ms"]
    lines.append(
        f"timings: queue {timings['queue']:.1f} ms, model {timings['model']:.1f} ms, total {timings['total']:.1f} ms"
    )
    return "\n".join(lines)


def no_node_message(
    namespace: str, query_topic: str, answer_topic: str, query_served: bool, wait_s: float, elsewhere: list[str]
) -> str:
    """The one stderr line when no language_node shows up: which topics were looked on, and what to do."""
    if query_served:
        problem = (
            f"something subscribes to {query_topic} but nothing publishes {answer_topic} "
            f"(namespace {namespace}) after {wait_s:g} s"
        )
    else:
        problem = f"no language_node subscribes to {query_topic} (namespace {namespace}) after {wait_s:g} s"
    if elsewhere:
        hint = (
            f"a Query topic is served at {', '.join(elsewhere)}: pass "
            f"--namespace {elsewhere[0].rsplit('/', 1)[0] or '/'}"
        )
    else:
        hint = "start it with `chatrex-ros up`, or pass --namespace if it runs elsewhere"
    return f"chatrex-ros ask: {problem}: {hint}"


def build_query(args: argparse.Namespace) -> Any:
    """The Query message for the parsed arguments; ``--stamp`` goes in as the exact nanoseconds it names."""
    from chatrex_ros.msg import Query
    from chatrex_ros.ros.conversions import ns_to_stamp

    query = Query(
        id=uuid.uuid4().hex[:12],
        task=args.task,
        text=args.text,
        max_new_tokens=max(0, args.max_new_tokens),
        timeout_s=float(args.timeout),
    )
    if args.task.startswith("region"):
        query.text = ""
        query.indices = list(args.indices)
    if args.stamp:  # 0 (the default) is the Query's "newest frame"
        query.image_stamp = ns_to_stamp(args.stamp)
    return query


def run(args: argparse.Namespace) -> int:
    """`ask`: wait for a language_node, publish the Query, print its Answer; the exit status says how it went."""
    if args.action:
        return run_action(args)
    import rclpy
    from rclpy.node import Node

    from chatrex_ros.msg import Answer, Query
    from chatrex_ros.ros.qos import reliable_qos

    query = build_query(args)
    namespace, query_topic, answer_topic = topic_names(args.namespace)
    rclpy.init(args=[])
    node = Node(f"chatrex_ask_{query.id}")
    answers: list[Answer] = []
    subscription = node.create_subscription(
        Answer, answer_topic, lambda a: answers.append(a) if a.query_id == query.id else None, reliable_qos()
    )
    publisher = node.create_publisher(Query, query_topic, reliable_qos())
    try:
        # Both directions must be matched before publishing: a reliable, volatile Query sent earlier is lost.
        node_deadline = time.monotonic() + args.wait_for_node
        while True:
            rclpy.spin_once(node, timeout_sec=SPIN_S)
            query_served = publisher.get_subscription_count() > 0
            if query_served and subscription.get_publisher_count() > 0:
                break
            if time.monotonic() >= node_deadline:
                elsewhere = _served_query_topics(node, exclude=query_topic)
                message = no_node_message(
                    namespace, query_topic, answer_topic, query_served, args.wait_for_node, elsewhere
                )
                print(message, file=sys.stderr)
                return ExitCode.NO_NODE
        publisher.publish(query)
        answer_deadline = time.monotonic() + args.timeout
        while not answers and time.monotonic() < answer_deadline:
            rclpy.spin_once(node, timeout_sec=SPIN_S)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    if not answers:
        print(f"chatrex-ros ask: no answer on {answer_topic} within {args.timeout:g} s", file=sys.stderr)
        return ExitCode.TIMEOUT
    return print_answer(answers[0], args.json)


def run_action(args: argparse.Namespace) -> int:
    """`ask --action`: the query as an ``ask`` action goal; stages to stderr, Ctrl-C cancels the goal."""
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    from chatrex_ros.action import Ask

    query = build_query(args)
    namespace, query_topic, _ = topic_names(args.namespace)
    action_name = query_topic.rsplit("/", 1)[0] + "/ask"
    # Ctrl-C only sets a flag that the spin loop checks: a KeyboardInterrupt raised inside rclpy's spin could
    # leave a half-run executor task behind, and the cancel's response or the result would then never arrive.
    # A second Ctrl-C gives up waiting at once.
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    node = Node(f"chatrex_ask_{query.id}")
    client: ActionClient = ActionClient(node, Ask, action_name)
    shown: list[tuple[str, int]] = []

    def show(message: Any) -> None:
        feedback = message.feedback
        stage = (feedback.stage_name, int(feedback.queue_position))
        if not shown or shown[-1] != stage:
            place = f" (position {feedback.queue_position})" if feedback.queue_position else ""
            print(f"[{feedback.elapsed_s:5.1f} s] {feedback.stage_name}{place}", file=sys.stderr)
        shown.append(stage)

    def spin_until(done: Callable[[], bool], seconds: float, until_ctrl_c: bool = False) -> bool:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline and not (until_ctrl_c and interrupted.is_set()):
            rclpy.spin_once(node, timeout_sec=SPIN_S)
        return done()

    try:
        if not client.wait_for_server(timeout_sec=args.wait_for_node):
            print(
                f"chatrex-ros ask: no `ask` action server at {action_name} (namespace {namespace}) after "
                f"{args.wait_for_node:g} s: start the language node with `chatrex-ros up`, or pass --namespace",
                file=sys.stderr,
            )
            return ExitCode.NO_NODE
        sent = client.send_goal_async(Ask.Goal(query=query), feedback_callback=show)
        goal_handle = sent.result() if spin_until(sent.done, args.wait_for_node) else None
        if goal_handle is None or not goal_handle.accepted:
            print(f"chatrex-ros ask: the goal was not accepted by {action_name}", file=sys.stderr)
            return ExitCode.FAILED
        result = goal_handle.get_result_async()
        if not spin_until(result.done, args.timeout, until_ctrl_c=True) and not interrupted.is_set():
            print(f"chatrex-ros ask: no result from {action_name} within {args.timeout:g} s", file=sys.stderr)
            return ExitCode.TIMEOUT
        if not result.done():
            print("chatrex-ros ask: cancelling the goal", file=sys.stderr)
            cancel = goal_handle.cancel_goal_async()
            spin_until(cancel.done, CANCEL_WAIT_S)
            spin_until(result.done, CANCEL_WAIT_S)
        response = result.result() if result.done() else None
        if response is None:
            print(f"chatrex-ros ask: no result from {action_name} after cancelling the goal", file=sys.stderr)
            return ExitCode.FAILED
        answer = response.result.answer
    except KeyboardInterrupt:  # a second Ctrl-C
        print("chatrex-ros ask: interrupted before the goal ended", file=sys.stderr)
        return ExitCode.FAILED
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        node.destroy_node()
        rclpy.shutdown()
    return print_answer(answer, args.json)


def print_answer(answer: Any, as_json: bool) -> int:
    """Print the answer (table or JSON) and return the exit status its status calls for."""
    summary = answer_to_dict(answer)
    print(json.dumps(summary, indent=2) if as_json else format_table(summary))
    if summary["status"] == "OK":
        return ExitCode.OK
    return ExitCode.TIMEOUT if summary["status"] == "TIMEOUT" else ExitCode.FAILED


def _served_query_topics(node: Any, exclude: str) -> list[str]:
    """Other ``.../query`` topics of type Query that something subscribes to: a language_node elsewhere."""
    return sorted(
        name
        for name, types in node.get_topic_names_and_types()
        if QUERY_TYPE in types and name != exclude and name.endswith("/query") and node.count_subscribers(name) > 0
    )
