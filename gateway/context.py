"""What every handler of the gateway shares, kept on the application."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from actors.broker import Broker
    from gateway.api import Limits
    from gateway.auth import Authenticator
    from gateway.events import EventHub
    from gateway.metrics import Metrics
    from gateway.settings import Settings
    from store.base import CheckpointStore


@dataclass
class GatewayContext:
    """The store, the broker and the gateway's own parts.

    Attributes:
        settings: the process's settings.
        store: the checkpoint store (started and stopped by the caller).
        broker: the broker (started and stopped by the caller).
        auth: bearer tokens and event tickets.
        hub: broadcasts fanned out to event streams.
        metrics: what ``/metrics`` reports.
        limits: what one request may carry.
        publish_timeout: seconds a control publish may take before 503.
    """

    settings: Settings
    store: CheckpointStore
    broker: Broker
    auth: Authenticator
    hub: EventHub
    metrics: Metrics
    limits: Limits
    publish_timeout: float


CONTEXT = web.AppKey("taskpoint_context", GatewayContext)


def context_of(request: web.Request) -> GatewayContext:
    """Return the gateway context of the request's application."""
    return request.app[CONTEXT]


REQUEST_ID = web.RequestKey("request_id", str)
TENANT = web.RequestKey("tenant", str)
TASK_ID = web.RequestKey("task_id", str)
