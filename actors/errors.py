"""The errors of the actor system: brokers, actors and processors."""

from __future__ import annotations

from store.errors import TaskpointError


class BrokerError(TaskpointError):
    """The message broker failed or refused an operation."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached; the operation may be tried again."""
