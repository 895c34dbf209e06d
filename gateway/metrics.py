"""Prometheus metrics of the gateway, in the text exposition format.

What a gateway process can observe itself: its requests (count and latency
by route and status) and the control requests it published (outcome and
publish-with-confirm latency). At each scrape it also reads, for the live
tasks (running, pausing, paused; at most :data:`MAX_TASKS`), their document
counters by state and token totals from the store and their job-queue depth
from the broker. Processing time per document and checkpoint write time are
measured where they happen, in the supervisor process; the gateway does not
see them.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator

from actors.broker import Broker
from actors.errors import BrokerError
from store.base import CheckpointStore
from store.states import TaskState

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAX_TASKS = 200
QUEUED_STATES = (TaskState.RUNNING, TaskState.PAUSING, TaskState.PAUSED)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


def label_text(labels: Labels) -> str:
    """Return ``{a="x",b="y"}`` with the values escaped, or nothing."""
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels) + "}"


def escape(value: str) -> str:
    """Escape a label value as the exposition format wants."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Histogram:
    """A Prometheus histogram with fixed buckets, per label set."""

    def __init__(self) -> None:
        self.counts: dict[Labels, list[int]] = {}
        self.sums: defaultdict[Labels, float] = defaultdict(float)

    def observe(self, labels: Labels, seconds: float) -> None:
        """Count one observation."""
        counts = self.counts.setdefault(labels, [0] * (len(BUCKETS) + 1))
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[labels] += seconds

    def lines(self, name: str) -> Iterator[str]:
        """Yield the exposition lines of every label set."""
        for labels, counts in sorted(self.counts.items()):
            running = 0
            for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                yield f"{name}_bucket{label_text((*labels, ('le', le)))} {running}"
            yield f"{name}_sum{label_text(labels)} {self.sums[labels]:.6f}"
            yield f"{name}_count{label_text(labels)} {running}"


class Metrics:
    """The gateway's counters and histograms."""

    def __init__(self) -> None:
        self.requests: defaultdict[Labels, int] = defaultdict(int)
        self.request_seconds = Histogram()
        self.controls: defaultdict[Labels, int] = defaultdict(int)
        self.publish_seconds = Histogram()

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests[
            (("method", method), ("route", route), ("status", str(status)))
        ] += 1
        self.request_seconds.observe((("route", route),), seconds)

    def control(self, action: str, outcome: str, seconds: float | None = None) -> None:
        """Count one control request by outcome; time its publish if it went."""
        self.controls[(("action", action), ("outcome", outcome))] += 1
        if seconds is not None:
            self.publish_seconds.observe((("action", action),), seconds)

    def own_lines(self) -> Iterator[str]:
        """Yield the lines of what this process measured itself."""
        yield "# TYPE taskpoint_gateway_requests_total counter"
        for labels, n in sorted(self.requests.items()):
            yield f"taskpoint_gateway_requests_total{label_text(labels)} {n}"
        yield "# TYPE taskpoint_gateway_request_seconds histogram"
        yield from self.request_seconds.lines("taskpoint_gateway_request_seconds")
        yield "# TYPE taskpoint_control_requests_total counter"
        for labels, n in sorted(self.controls.items()):
            yield f"taskpoint_control_requests_total{label_text(labels)} {n}"
        yield "# TYPE taskpoint_control_publish_seconds histogram"
        yield from self.publish_seconds.lines("taskpoint_control_publish_seconds")

    async def render(self, store: CheckpointStore, broker: Broker) -> str:
        """Return the whole exposition, the live tasks' figures read now."""
        lines = [*self.own_lines(), *await task_lines(store, broker)]
        return "\n".join(lines) + "\n"


async def task_lines(store: CheckpointStore, broker: Broker) -> list[str]:
    """Return the documents, tokens and queue depth of the live tasks."""
    docs = ["# TYPE taskpoint_task_documents gauge"]
    tokens = ["# TYPE taskpoint_task_tokens gauge"]
    depth = ["# TYPE taskpoint_task_queue_depth gauge"]
    for task in await store.list_tasks(states=QUEUED_STATES, limit=MAX_TASKS):
        base = (("task_id", task.task_id), ("tenant", task.tenant))
        counts = await store.counts(task.task_id)
        for state in (
            "pending",
            "running",
            "retry_wait",
            "completed",
            "failed",
            "cancelled",
        ):
            value = getattr(counts, state)
            labels = label_text((*base, ("state", state)))
            docs.append(f"taskpoint_task_documents{labels} {value}")
        for kind in ("prompt", "completion"):
            value = getattr(task.tokens, kind)
            tokens.append(
                f"taskpoint_task_tokens{label_text((*base, ('kind', kind)))} {value}"
            )
        try:
            queued = await broker.job_depth(task.task_id)
        except BrokerError:
            continue
        depth.append(f"taskpoint_task_queue_depth{label_text(base)} {queued}")
    return [*docs, *tokens, *depth]
