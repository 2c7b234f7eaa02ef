"""Pictures of a run, as Lithops' ``plot`` draws them: each call's timeline (queued,
set-up, running) and a histogram of durations. ``FunctionExecutor.plot()`` and ``fum
calls --plot FILE`` draw them; matplotlib comes with the ``plot`` extra
(``pip install 'fum-cluster[plot]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from .errors import FumError
from .models import Call

COLOURS = {"queued": "#c9c9c9", "set-up": "#f0a73a", "running": "#3a7bd5"}


def _seconds(stamp: str | None) -> float | None:
    return None if stamp is None else datetime.fromisoformat(stamp).timestamp()


def phases(call: Call) -> tuple[float, float, float, float] | None:
    """(created, started, set up, finished) in seconds since the epoch; None for a call
    that has not ended or has no timings. ``startedAt`` is when a sandbox took the call,
    before its set-up (``initMs``)."""
    created, started, finished = (
        _seconds(call.created_at),
        _seconds(call.started_at),
        _seconds(call.finished_at),
    )
    if created is None or started is None or finished is None:
        return None
    ready = min(finished, started + (call.init_ms or 0.0) / 1000)
    return created, started, ready, finished


def plot(calls: Sequence[Call], dst: str | Path, title: str = "") -> list[Path]:
    """Write ``<dst>_timeline.png`` and ``<dst>_histogram.png`` (a ``.png`` suffix of
    ``dst`` is dropped); the paths written. Calls that have not ended are left out."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise FumError("plots need matplotlib: pip install 'fum-cluster[plot]'") from None
    timed = sorted(((c, p) for c in calls if (p := phases(c)) is not None), key=lambda cp: cp[1][0])
    if not timed:
        raise FumError("no call has ended with timings: nothing to plot")
    base = Path(dst)
    if base.suffix == ".png":
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    origin = timed[0][1][0]
    title = title or f"{len(timed)} calls"

    fig, ax = plt.subplots(figsize=(10, max(3.0, min(12.0, 0.02 * len(timed) + 3))))
    for row, (_, (created, started, ready, finished)) in enumerate(timed):
        for name, begin, end in (
            ("queued", created, started),
            ("set-up", started, ready),
            ("running", ready, finished),
        ):
            if end > begin:
                ax.barh(row, end - begin, left=begin - origin, height=0.8, color=COLOURS[name])
    ax.set_xlabel("seconds since the first call was made")
    ax.set_ylabel("call (in the order made)")
    ax.set_title(f"{title}: timeline")
    ax.legend(handles=[Patch(color=c, label=n) for n, c in COLOURS.items()], loc="lower right")
    timeline = base.with_name(base.name + "_timeline.png")
    fig.tight_layout()
    fig.savefig(timeline, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    durations = [finished - ready for _, (_, _, ready, finished) in timed]
    ax.hist(durations, bins=min(50, max(5, len(durations) // 5)), color=COLOURS["running"])
    ax.set_xlabel("running time, seconds (set-up not counted)")
    ax.set_ylabel("calls")
    ax.set_title(f"{title}: durations")
    histogram = base.with_name(base.name + "_histogram.png")
    fig.tight_layout()
    fig.savefig(histogram, dpi=100)
    plt.close(fig)
    return [timeline, histogram]
