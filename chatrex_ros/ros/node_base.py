"""The start-up every chatrex node shares, in one order.

1. declare the node's parameter table and validate it (a bad value fails start-up, listing every bad one);
   an override that names no parameter (``-p no_such_param:=1``, a misspelled key in a params file), which
   rclpy ignores silently, is warned about once with the closest valid name, and stays on /diagnostics;
2. resolve it into the node's frozen parameter dataclass and check the rules that span parameters;
3. the problem log, and a validator for runtime changes that goes through the same two checks;
4. (the node builds its model, publishers and subscriptions);
5. :meth:`ChatrexNode.start_serving`: /diagnostics and the one "ready" line.

Worker threads start through :meth:`ChatrexNode.start_worker`: one that dies turns /diagnostics ERROR and stops
the node with a non-zero exit code, so a supervisor restarts it instead of a live process that stopped working.
"""

from __future__ import annotations

import difflib
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from rclpy.node import Node

from chatrex_ros.core.stamps import NS_PER_S, format_stamp
from chatrex_ros.core.time_jumps import StampEvent, StampVerdict
from chatrex_ros.node_parameters import typed, with_changes
from chatrex_ros.parameters import ParamSpec
from chatrex_ros.ros.health import ERROR, WARN, Condition, Diagnostics, InputWatch, ProblemLog
from chatrex_ros.ros.node_runtime import EXIT_WORKER_DIED, StartupError
from chatrex_ros.ros.params import declare_parameters, install_validator

P = TypeVar("P")


class ChatrexNode(Node, Generic[P]):
    """A node whose parameters are one table, read through the frozen dataclass ``params``."""

    def __init__(self, name: str, specs: Sequence[ParamSpec], params_type: type[P], **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.params: P = typed(params_type, declare_parameters(self, specs))
        problem = self.check_parameters(self.params)
        if problem:
            raise StartupError(problem)
        self.problems = ProblemLog(self.get_logger())
        self._unknown_overrides = self._warn_unknown_overrides()
        self.running = True  # False once close() began: worker loops end, their ending is no failure
        self.exit_code = 0
        self._failure: Condition | None = None
        install_validator(self, specs, self._on_parameters)

    def _warn_unknown_overrides(self) -> Condition | None:
        """Warn once per override that matches no declared parameter, naming the closest one; None if all match.

        ``qos_overrides.*`` are left out: rclpy declares them later, with the publishers that allow them.
        """
        declared = sorted(self._parameters)
        unknown = sorted(
            name
            for name in self._parameter_overrides
            if name not in self._parameters and not name.startswith("qos_overrides.")
        )
        if not unknown:
            return None
        described = []
        for name in unknown:
            closest = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
            hint = f" (did you mean {closest[0]!r}?)" if closest else ""
            described.append(f"{name!r}{hint}")
            self.get_logger().warning(
                f"parameter override {name!r} matches no parameter of {self.get_name()} and is ignored{hint}"
            )
        return Condition(WARN, "unknown_parameters", f"ignored overrides of no parameter: {', '.join(described)}")

    def check_parameters(self, params: P) -> str | None:
        """Rules that span parameters: None when ``params`` are consistent, else the reason (override)."""
        return None

    def apply_parameters(self, params: P) -> str | None:
        """Take validated runtime changes; return a reason to refuse them (override to rebuild what depends on them)."""
        self.params = params
        return None

    def watch_input(self, what: str, silence_s: float, fix: str) -> InputWatch:
        """An :class:`InputWatch` reporting into this node's problem log."""
        return InputWatch(self, what, silence_s, fix, self.problems)

    def start_serving(
        self,
        ready: str,
        values: Callable[[], dict[str, object]],
        conditions: Callable[[], list[Condition]] | None = None,
    ) -> None:
        """Publish /diagnostics from now on and log the node's one "ready" line."""

        def all_conditions() -> list[Condition]:
            found = conditions() if conditions is not None else []
            if self._unknown_overrides is not None:
                found = [*found, self._unknown_overrides]
            return [self._failure, *found] if self._failure is not None else found

        self.diagnostics = Diagnostics(self, values, self.problems, all_conditions)
        self.get_logger().info(ready)

    def start_worker(self, name: str, loop: Callable[[], None]) -> threading.Thread:
        """Run ``loop`` on a daemon thread (abandoned at exit, so a stuck model never delays shutdown).

        ``loop`` must catch what its work raises; if it raises anyway, or returns while the node still runs,
        the node fails: see :meth:`fail`.
        """

        def run() -> None:
            try:
                loop()
            except BaseException as error:
                if self.running:
                    self.fail(f"worker thread {name!r} died: {type(error).__name__}: {error}", traceback.format_exc())
                return
            if self.running:
                self.fail(f"worker thread {name!r} stopped while the node was running")

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def fail(self, reason: str, details: str = "") -> None:
        """A part of the node stopped working: ERROR on /diagnostics, then stop with exit code EXIT_WORKER_DIED."""
        self.get_logger().fatal(f"{reason}; stopping with exit code {EXIT_WORKER_DIED} so a supervisor restarts")
        if details:
            self.get_logger().error(details)
        self._failure = Condition(ERROR, "worker_died", reason)
        self.exit_code = EXIT_WORKER_DIED
        diagnostics = getattr(self, "diagnostics", None)
        if diagnostics is not None:
            diagnostics.publish()
        time.sleep(0.5)  # let the ERROR status reach subscribers before the participant goes
        if self.context.ok():
            self.context.try_shutdown()

    def report_stamp_event(self, stream: str, verdict: StampVerdict, cleared: str) -> None:
        """Report a time jump (a bag replayed again, a clock reset) or a mis-stamped frame of ``stream``."""
        if verdict.event is StampEvent.JUMP:
            self.problems.report(
                "time_jump",
                f"{stream} stamps jumped back by {verdict.jump_ns / NS_PER_S:.3f} s "
                f"(a bag replayed again, a clock reset): cleared {cleared}",
            )
        elif verdict.event is StampEvent.OUTLIER and verdict.dropped is not None:
            self.problems.report(
                "stamp_outlier",
                f"dropped the {stream} frame stamped {format_stamp(verdict.dropped)}: its stamp does not fit its "
                "neighbours (camera clock glitch?)",
            )

    def _on_parameters(self, changed: dict[str, Any]) -> str | None:
        params = with_changes(self.params, changed)
        return self.check_parameters(params) or self.apply_parameters(params)
