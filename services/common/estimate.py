"""What a start costs against what waiting costs: one estimate for the node's pool (start
another sandbox, or queue for a warm one?) and the api's placement (which node will
start a call soonest?).

A function's calls wait on the sandboxes it has (warm, or being started for it). With
``queued`` calls before a new one and ``serving`` sandboxes taking them, each call
lasting ``duration`` seconds, the new call waits about ``queued * duration / serving``.
A new sandbox serves it after its start time (observed per function and start kind:
``specialized`` from a generic sandbox, ``cold`` from nothing). Starting one is worth it
only when the wait is longer; otherwise the call is cheaper queued. Before anything is
known of the function's calls, one start at a time: its first call tells.
"""

from __future__ import annotations

import math

# Weight of the newest observation in a moving average.
SMOOTHING = 1 / 8
# Seconds a start of a kind not observed yet on a node is taken to cost (about what a
# container's start costs): before it is known, a burst of short calls does not start a
# sandbox per call; a long call's wait soon passes it.
UNKNOWN_START = 0.5


def moving(mean: float | None, value: float) -> float:
    """A moving average of observations (the first one is the average)."""
    return value if mean is None else mean + (value - mean) * SMOOTHING


def expected_wait(queued: int, serving: int, duration: float | None) -> float | None:
    """Seconds a call behind ``queued`` others waits on ``serving`` sandboxes of its
    function whose calls last ``duration``: infinite with no sandbox, None when the
    duration is not known yet."""
    if serving <= 0:
        return math.inf
    if duration is None:
        return None
    return queued * duration / serving


def worth_starting(wait: float | None, start: float | None) -> bool:
    """Whether a new sandbox serves a call sooner than waiting (``wait``) does, for a
    start expected to take ``start`` seconds (None: not observed yet, UNKNOWN_START)."""
    if wait is None:
        return False  # nothing known of the function's calls: its sandboxes first tell
    return wait > (UNKNOWN_START if start is None else start)


def expected_start(wait: float | None, start: float | None) -> float:
    """Seconds until a new call would begin on a node: the wait on its sandboxes, or a
    start when that is sooner."""
    begin = UNKNOWN_START if start is None else start
    return begin if wait is None else min(wait, begin)
