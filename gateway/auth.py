"""Authentication: bearer tokens found by their hash, and event-stream tickets.

A token is looked up by its SHA-256 in the store (one indexed read), and a
known one is remembered for 30 s so that a busy client costs no read per
request; the token itself is never stored nor accepted in a URL. Browsers cannot send an
``Authorization`` header on an ``EventSource``, so an authenticated client
trades its token for a ticket: random, bound to one tenant and one task,
usable once, expiring after a minute. Tickets live in this process's memory:
a gateway behind a load balancer needs sticky sessions for the ticket and
stream requests, or the stream request fails with 401 and is retried.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway.api import ApiError, EventTicket
from gateway.context import TENANT
from gateway.tokens import hash_token
from store.base import CheckpointStore

TICKET_SECONDS = 60.0
MAX_TICKETS = 10_000
# Known tokens are remembered this long, so a busy client costs no store read
# per request; a token deleted from the store stops working within it.
TOKEN_CACHE_SECONDS = 30.0
MAX_CACHED_TOKENS = 10_000
CHALLENGE = 'Bearer realm="taskpoint"'


@dataclass(frozen=True)
class Ticket:
    """A ticket's grant: which tenant may watch which task, until when."""

    tenant: str
    task_id: str
    expires: float


class Authenticator:
    """Finds the tenant of a request; issues and redeems event tickets.

    Args:
        store: where token hashes are kept.
        ticket_seconds: how long a ticket stays valid.
    """

    def __init__(
        self, store: CheckpointStore, *, ticket_seconds: float = TICKET_SECONDS
    ) -> None:
        self.store = store
        self.ticket_seconds = ticket_seconds
        self._tickets: dict[str, Ticket] = {}
        self._known: dict[str, tuple[str, float]] = {}

    async def tenant(self, request: web.Request) -> str:
        """Return the tenant of the request's bearer token.

        Raises:
            ApiError: 401 when the header is missing, malformed or unknown.
        """
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise unauthorized("missing Authorization header: send 'Bearer <token>'")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("the Authorization header must be 'Bearer <token>'")
        tenant = await self._tenant_of(hash_token(token.strip()))
        if tenant is None:
            raise unauthorized("unknown or revoked token", error="invalid_token")
        request[TENANT] = tenant
        return tenant

    async def _tenant_of(self, token_hash: str) -> str | None:
        now = time.monotonic()
        known = self._known.get(token_hash)
        if known is not None and known[1] > now:
            return known[0]
        tenant = await self.store.tenant_of_token(token_hash)
        if tenant is not None:
            # Only known tokens are remembered: a new token works at once.
            if len(self._known) >= MAX_CACHED_TOKENS:
                self._known.clear()
            self._known[token_hash] = (tenant, now + TOKEN_CACHE_SECONDS)
        return tenant

    def issue(self, tenant: str, task_id: str) -> EventTicket:
        """Return a fresh single-use ticket for the events of one task."""
        self._expire()
        if len(self._tickets) >= MAX_TICKETS:
            raise ApiError(429, "too_many_tickets", "too many open tickets; retry")
        ticket = secrets.token_urlsafe(24)
        expires = time.monotonic() + self.ticket_seconds
        self._tickets[ticket] = Ticket(tenant, task_id, expires)
        at = datetime.now(UTC) + timedelta(seconds=self.ticket_seconds)
        return EventTicket(ticket=ticket, expires_at=at)

    def redeem(self, request: web.Request, ticket: str, task_id: str) -> str:
        """Spend a ticket for ``task_id`` and return its tenant.

        Raises:
            ApiError: 401 when the ticket is unknown, spent, expired or for
                another task.
        """
        grant = self._tickets.pop(ticket, None)
        if grant is None or grant.expires < time.monotonic():
            raise unauthorized(
                "unknown, spent or expired ticket", error="invalid_token"
            )
        if grant.task_id != task_id:
            raise unauthorized("this ticket is for another task", error="invalid_token")
        request[TENANT] = grant.tenant
        return grant.tenant

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self._tickets.items() if t.expires < now]:
            del self._tickets[key]


def unauthorized(message: str, *, error: str | None = None) -> ApiError:
    """Return a 401 error with the ``WWW-Authenticate`` challenge."""
    challenge = CHALLENGE if error is None else f'{CHALLENGE}, error="{error}"'
    return ApiError(
        401, "unauthorized", message, headers={"WWW-Authenticate": challenge}
    )
