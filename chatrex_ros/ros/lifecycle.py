"""Managed (lifecycle) nodes: a supervisor loads, pauses and frees a node's model through the standard services.

``nav2_lifecycle_manager``, launch's lifecycle events or any ``lifecycle_msgs`` client drive the transitions
through ``<node>/change_state`` and read them on ``<node>/get_state``:

* configure: load and warm up the model (:meth:`ManagedNode.load_model`); a failure leaves the node UNCONFIGURED
  with the reason logged and on /diagnostics;
* activate / deactivate: serve, or stop serving (each node says how inputs are answered meanwhile);
* cleanup: free the model and its GPU memory (:meth:`ManagedNode.free_model`).

With the ``autostart`` parameter (default true) the node configures and activates itself at start-up, as an
unmanaged node would run, and a model that cannot load stops it with one line (exit 1), as before.
"""

from __future__ import annotations

import gc
import sys
from typing import Any, TypeVar

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn

from chatrex_ros.ros.health import ERROR, WARN, Condition
from chatrex_ros.ros.node_base import ChatrexNode
from chatrex_ros.ros.node_runtime import StartupError

P = TypeVar("P")
_SETTING_ERRORS = (StartupError, ValueError, TypeError)
"""What a model raises for a bad setting: reported by its message alone (anything else with its type too)."""


class ManagedNode(ChatrexNode[P], LifecycleNodeMixin):
    """A :class:`ChatrexNode` with the lifecycle state machine; ``active`` says whether it serves now."""

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        # Their own group: a configure that loads a 16 GB model must not hold up /diagnostics or the intake.
        LifecycleNodeMixin.__init__(self, callback_group=MutuallyExclusiveCallbackGroup())
        self.active = False
        self.lifecycle_state = "unconfigured"
        self.configure_failure: str | None = None
        self._configure_error: Exception | None = None
        self._autostarting = False  # a failure then ends the process with run_node's one line: not logged here

    # ---- what a node provides ----
    def load_model(self) -> None:
        """Build and warm up the model (configure); raise with a one-line reason when it cannot.

        A :class:`StartupError`, ``ValueError`` or ``TypeError`` (a bad setting) is reported by its message alone,
        anything else with its type (:data:`_SETTING_ERRORS`).
        """

    def free_model(self) -> None:
        """Drop every reference to the model (cleanup); :meth:`on_cleanup` then collects and empties the GPU cache."""

    # ---- start-up ----
    def start_lifecycle(self, autostart: bool) -> None:
        """With ``autostart``: configure and activate now; a model that cannot load is a :class:`StartupError`."""
        if not autostart:
            self.get_logger().info("autostart is off: unconfigured until a lifecycle manager configures the node")
            return
        self._autostarting = True
        try:
            self.trigger_configure()
        finally:
            self._autostarting = False
        error = self._configure_error
        if error is not None:  # as an unmanaged node failed: run_node prints it in one line, exit 1
            raise StartupError(str(error)) if isinstance(error, _SETTING_ERRORS) else error
        self.trigger_activate()

    def lifecycle_condition(self) -> Condition | None:
        """ERROR after a failed configure, WARN while not active: a paused node is never mistaken for a dead one."""
        if self.configure_failure is not None:
            return Condition(ERROR, "configure_failed", f"configure failed: {self.configure_failure}")
        if not self.active:
            return Condition(
                WARN, "not_active", f"lifecycle state {self.lifecycle_state}: not serving (a lifecycle manager's call)"
            )
        return None

    # ---- transitions ----
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model; on failure stay UNCONFIGURED with the reason (logged, and ERROR on /diagnostics)."""
        try:
            self.load_model()
        except Exception as error:  # the reason, in one line; the node stays UNCONFIGURED and keeps running
            self._configure_error = error
            named = isinstance(error, _SETTING_ERRORS)
            self.configure_failure = str(error) if named else f"{type(error).__name__}: {error}"
            if not self._autostarting:
                self.get_logger().error(f"configure failed: {self.configure_failure}")
            self.free_model()
            return TransitionCallbackReturn.FAILURE
        self.configure_failure, self._configure_error = None, None
        self.lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Serve from now on."""
        self.active, self.lifecycle_state = True, "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop serving; the model stays loaded."""
        self.active, self.lifecycle_state = False, "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model and the memory it held."""
        self.active, self.lifecycle_state = False, "unconfigured"
        self.free_model()
        release_memory()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Finalized: nothing is served again."""
        self.active, self.lifecycle_state = False, "finalized"
        return TransitionCallbackReturn.SUCCESS


def release_memory() -> None:
    """Collect what the freed model left, and hand torch's cached GPU blocks back to the driver (if torch is in)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
