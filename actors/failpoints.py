"""Failpoints: places where a test may kill the process, and nothing else.

A failpoint does nothing unless the entry point enabled it (from the
``TASKPOINT_FAILPOINTS`` setting, for fault tests). ``name`` kills the process
with SIGKILL at the first pass through that place; ``name@N`` at the Nth.
Several are separated by commas. Known places:

- ``after-claim``: documents claimed durably, their job message not yet acked.
- ``after-checkpoint``: an outcome written durably, its worker not yet told.
- ``lease-extension``: between two tasks' lease extensions in a heartbeat.
- ``mid-group-write``: half of a grouped checkpoint write done, half not.
- ``mid-finalize``: a batch of a finalize phase merged and checkpointed.
"""

from __future__ import annotations

import logging
import os
import signal

logger = logging.getLogger(__name__)

KNOWN = frozenset(
    {
        "after-claim",
        "after-checkpoint",
        "lease-extension",
        "mid-group-write",
        "mid-finalize",
    }
)
_armed: dict[str, int] = {}


def configure(spec: str) -> None:
    """Arm the failpoints that ``spec`` names (``name`` or ``name@N``, comma-separated).

    Raises:
        ValueError: a name is not a known failpoint, or N is not a whole number.
    """
    _armed.clear()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, nth = part.partition("@")
        if name not in KNOWN:
            raise ValueError(f"unknown failpoint {name!r}; known: {sorted(KNOWN)}")
        _armed[name] = int(nth or 1)
        logger.warning("failpoint armed: %s at pass %d", name, _armed[name])


def armed(name: str) -> bool:
    """Tell whether ``name`` is armed at all (to split work around it)."""
    return name in _armed


def hit(name: str) -> None:
    """Pass through the failpoint ``name``: kill the process if its time came."""
    if name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] <= 0:
        logger.warning("failpoint %s: killing the process", name)
        os.kill(os.getpid(), signal.SIGKILL)
