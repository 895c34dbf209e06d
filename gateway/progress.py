"""The ``taskpoint watch`` renderer: a task's checkpoint-status as a progress bar.

On a terminal the bar is redrawn in place on one line; into a pipe or a file a
line is written only when something changed, so that a log of a long task
stays readable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

BAR_WIDTH = 24
ENDED_STATES = frozenset(
    {"completed", "completed_with_failures", "failed", "cancelled"}
)


def human_count(value: float) -> str:
    """Return a count in a few characters: 950, 12.3k, 4.1M."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def human_duration(seconds: float | None) -> str:
    """Return a duration as ``H:MM:SS``, or ``--:--`` when it is unknown."""
    if seconds is None or seconds < 0:
        return "--:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def bar(progress: float, width: int = BAR_WIDTH) -> str:
    """Return a bar of ``width`` cells filled to ``progress`` (0 to 1)."""
    filled = round(max(0.0, min(1.0, progress)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def render(status: Mapping[str, Any]) -> str:
    """Return one line describing a checkpoint-status.

    Example: ``[######------] 52% running  520/1000 done  3 failed  8 running
    469 pending  tokens 1.2M  12.3 docs/s  ETA 0:00:39``.
    """
    tokens = status.get("token_count") or {}
    throughput = status.get("throughput")
    parts = [
        bar(float(status.get("progress") or 0.0)),
        f"{float(status.get('progress') or 0.0):4.0%}",
        str(status.get("state", "?")),
        f" {status.get('completed_documents', 0)}/{status.get('total_documents', 0)}"
        " done",
        f"{status.get('failed_documents', 0)} failed",
        f"{status.get('running_documents', 0)} running",
        f"{status.get('pending_documents', 0)} pending",
        f"tokens {human_count(float(tokens.get('total', 0)))}",
        f"{throughput:.1f} docs/s" if throughput else "-- docs/s",
        f"ETA {human_duration(status.get('eta_seconds'))}",
    ]
    if status.get("reason"):
        parts.append(f"({status['reason']})")
    return " ".join(parts)


class ProgressView:
    """Draws successive statuses of one task on a stream.

    Args:
        stream: where to draw (standard error, for a person).
        live: redraw one line in place (a terminal) instead of appending lines.
    """

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._last = ""

    def update(self, status: Mapping[str, Any]) -> None:
        """Draw a status, unless nothing visible changed since the last one."""
        line = render(status)
        if line == self._last:
            return
        self._last = line
        if self.live:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the live line, so that what follows starts on a line of its own."""
        if self.live and self._last:
            self.stream.write("\n")
            self.stream.flush()
