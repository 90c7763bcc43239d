"""`chatrex-ros ask "the red mug"`: publish a Query, wait for its Answer, print it (a table, or --json)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

EXIT_OK, EXIT_ERROR_STATUS, EXIT_TIMEOUT, EXIT_NO_NODE = 0, 1, 3, 4


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ask", help="ask the running language_node a question", description=__doc__)
    parser.add_argument("text", help="target phrase(s) for detect/count ('a; b'), the question for chat")
    parser.add_argument("--task", default="detect", help="detect, count, region_category, ..., chat (default detect)")
    parser.add_argument("--indices", default="", help="proposal indices for region tasks, e.g. 3,5")
    parser.add_argument("--stamp", type=float, default=0.0, help="image stamp in seconds (default: newest frame)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    parser.add_argument("--max-new-tokens", type=int, default=0)
    parser.add_argument("--namespace", default="/chatrex", help="namespace of the language_node topics")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.set_defaults(func=run)


def answer_to_dict(answer: Any) -> dict[str, Any]:
    from chatrex_ros.core.answering import AnswerStatus

    return {
        "query_id": answer.query_id, "task": answer.task, "status": AnswerStatus(answer.status).name,
        "status_message": answer.status_message, "text": answer.text, "raw_output": answer.raw_output,
        "question": answer.question,
        "image_stamp": answer.header.stamp.sec + answer.header.stamp.nanosec * 1e-9,
        "frame_id": answer.header.frame_id, "num_proposals": answer.num_proposals,
        "detections": [{"index": d.proposal_index, "label": d.label, "box": [round(float(v), 2) for v in d.box],
                        "score": round(float(d.score), 4)} for d in answer.detections],
        "timings_ms": {"queue": answer.queue_ms, "model": answer.model_ms, "total": answer.total_ms},
    }


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"status: {summary['status']}" + (f" ({summary['status_message']})" if summary["status_message"] else ""),
             f"answer: {summary['text']}"]
    if summary["detections"]:
        lines.append(f"{'index':>5}  {'label':<24} {'score':>6}  box (x1 y1 x2 y2)")
        for d in summary["detections"]:
            box = " ".join(f"{v:.1f}" for v in d["box"])
            lines.append(f"{d['index']:>5}  {d['label'][:24]:<24} {d['score']:>6.3f}  {box}")
    timings = summary["timings_ms"]
    lines.append(f"timings: queue {timings['queue']:.1f} ms, model {timings['model']:.1f} ms, total {timings['total']:.1f} ms")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.node import Node

    from chatrex_ros.msg import Answer, Query
    from chatrex_ros.ros.conversions import ns_to_stamp
    from chatrex_ros.ros.qos import reliable_qos

    query = Query(id=uuid.uuid4().hex[:12], task=args.task, text=args.text, max_new_tokens=max(0, args.max_new_tokens),
                  timeout_s=float(args.timeout))
    if args.task.startswith("region"):
        query.text = ""
        query.indices = [int(i) for i in args.indices.replace(";", ",").split(",") if i.strip()]
    if args.stamp > 0:
        query.image_stamp = ns_to_stamp(int(round(args.stamp * 1e9)))
    namespace = args.namespace.rstrip("/")
    rclpy.init(args=[])
    node = Node(f"chatrex_ask_{query.id}")
    answers: list[Answer] = []
    node.create_subscription(Answer, f"{namespace}/answer", lambda a: answers.append(a) if a.query_id == query.id else None,
                             reliable_qos())
    publisher = node.create_publisher(Query, f"{namespace}/query", reliable_qos())
    deadline = time.monotonic() + args.timeout
    try:
        while publisher.get_subscription_count() == 0 or node.count_publishers(f"{namespace}/answer") == 0:
            if time.monotonic() > deadline:
                print(f"no language_node is listening on {namespace}/query", file=sys.stderr)
                return EXIT_NO_NODE
            rclpy.spin_once(node, timeout_sec=0.05)
        publisher.publish(query)
        while not answers and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    if not answers:
        print(f"no answer within {args.timeout:.1f} s", file=sys.stderr)
        return EXIT_TIMEOUT
    summary = answer_to_dict(answers[0])
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return EXIT_OK if summary["status"] == "OK" else (EXIT_TIMEOUT if summary["status"] == "TIMEOUT" else EXIT_ERROR_STATUS)
