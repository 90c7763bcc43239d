"""The exit statuses of every `chatrex-ros` subcommand: one table, so a script can rely on what each means."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What a ``chatrex-ros`` process exits with (``up`` also passes on the exit status of a node that ended)."""

    OK = 0
    """Done: the answer is OK, the evaluation or export was written, the replay finished, `up` was stopped."""
    FAILED = 1
    """It ran but did not succeed: an answer with an error status, a failed evaluation or export, an incomplete
    replay, a node of `up` that exited 0 on its own (the graph is incomplete)."""
    BAD_INPUT = 2
    """Nothing was done: bad arguments (argparse's usage errors), configuration, bag or files."""
    TIMEOUT = 3
    """`ask`: no answer in time, or the answer's status is TIMEOUT."""
    NO_NODE = 4
    """`ask`: no language_node serves the query/answer topics."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C (128 + SIGINT), as a shell reports it."""
