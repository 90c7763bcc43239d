"""Start-up and spin boilerplate shared by the nodes: a clear error instead of a traceback, clean Ctrl-C."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def publish_from_worker(node: Node, publisher, msg) -> bool:
    """Publish from a worker thread; False instead of an exception when rclpy is shutting down.

    Why: on SIGINT/SIGTERM rclpy invalidates the context while a worker may still be finishing a frame or a
    query; that last publish must not end the process with a traceback.
    """
    if not node.context.ok():
        return False
    try:
        publisher.publish(msg)
    except Exception:
        if node.context.ok():
            raise
        return False
    return True


EXIT_WORKER_DIED = 70  # sysexits' EX_SOFTWARE: an internal failure, worth a restart by a supervisor


class StartupError(RuntimeError):
    """A configuration problem found before spinning (missing file, dependency, bad parameter)."""


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """rclpy.init, build the node, spin until shutdown: the exit code.

    0 after a normal stop, 1 with one readable line on a start-up error, the node's ``exit_code`` when a
    part of it failed while running (:data:`EXIT_WORKER_DIED`).
    """
    rclpy.init(args=args if args is not None else sys.argv)
    node: Node | None = None
    exit_code = 0
    try:
        try:
            node = factory()
        except (KeyboardInterrupt, ExternalShutdownException):
            raise
        except Exception as error:  # a configuration problem: one readable line, not a traceback
            print(f"[chatrex_ros] start-up failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            return 1
        # One thread: no callback of ours blocks (model work runs on the nodes' own worker threads, a waiting
        # `ask` holds no callback), and rclpy's multi-threaded executor costs several times the CPU per
        # message (language_node idle beside a 720p30 camera: 39 % of a core with four threads, 8 % with one).
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except Exception:
            # rclpy's executor can fail to build its wait set when SIGINT/SIGTERM shut the context down
            # between two spins: that is a normal stop, anything else is a real error.
            if rclpy.ok():
                raise
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            exit_code = int(getattr(node, "exit_code", 0))
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return exit_code
