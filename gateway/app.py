"""The gateway's aiohttp application: routes, middleware, start and stop.

``make_app`` wires the REST interface of ``design.md`` onto a started store
and broker that the caller owns. The application adds its own parts: the
authenticator, the broadcast hub of the event streams (one broker
subscription, made when the application starts), and the metrics.

Every request passes one middleware that gives it a request id (the client's
``X-Request-Id`` when it is sane, else a fresh one, echoed in the answer),
turns every error (ours, aiohttp's 404 and 405, and unexpected ones, whose
traceback goes to the log only) into the one ``ErrorBody`` shape, counts it,
and logs it once with its tenant, task, status and duration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from actors.broker import Broker
from actors.errors import BrokerError, BrokerUnavailable
from gateway import openapi, web_ui
from gateway.api import ApiError, Health, Limits
from gateway.auth import Authenticator
from gateway.context import (
    CONTEXT,
    REQUEST_ID,
    TASK_ID,
    TENANT,
    GatewayContext,
    context_of,
)
from gateway.events import EventHub
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.responses import error_response, json_response
from gateway.routes import API, Route, add_routes, api_routes
from gateway.settings import Settings
from store.base import CheckpointStore
from store.errors import StoreError

logger = logging.getLogger(__name__)

SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
READY_TIMEOUT = 2.0
PUBLISH_TIMEOUT = 5.0
# The probe of /readyz: an indexed read of a token hash that no token has.
PROBE_HASH = "readyz-probe"


def make_app(
    settings: Settings,
    store: CheckpointStore,
    broker: Broker,
    *,
    limits: Limits | None = None,
    publish_timeout: float = PUBLISH_TIMEOUT,
) -> web.Application:
    """Return the gateway application over a started store and broker.

    Args:
        settings: the process's settings.
        store: the checkpoint store; the caller starts and stops it.
        broker: the broker; the caller starts and stops it.
        limits: what one request may carry (the defaults of ``api.py``).
        publish_timeout: seconds a control publish may take before a 503.
    """
    limits = limits or Limits()
    app = web.Application(middlewares=[observe], client_max_size=limits.body_bytes)
    app[CONTEXT] = GatewayContext(
        settings=settings,
        store=store,
        broker=broker,
        auth=Authenticator(store),
        hub=EventHub(),
        metrics=Metrics(),
        limits=limits,
        publish_timeout=publish_timeout,
    )
    add_routes(app, all_routes())
    web_ui.add_ui_routes(app)
    app.cleanup_ctx.append(broadcasts)
    app.on_shutdown.append(end_streams)
    return app


def all_routes() -> list[Route]:
    """Return every route: the API and the service routes."""
    return [*api_routes(), *service_routes()]


async def broadcasts(app: web.Application) -> AsyncIterator[None]:
    """Hear broadcasts while the application runs."""
    hub = app[CONTEXT].hub
    await hub.start(app[CONTEXT].broker)
    yield
    await hub.stop()


async def end_streams(app: web.Application) -> None:
    """End the event streams, so that shutdown does not wait for them."""
    app[CONTEXT].hub.closing.set()
    app[CONTEXT].hub.notify_all()


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id, answer every error as JSON, count and log it."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if SANE_REQUEST_ID.match(given) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    response = await answer(request, handler, request_id)
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    seconds = time.perf_counter() - started
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    context_of(request).metrics.request(request.method, name, response.status, seconds)
    logger.info(
        "%s %s status=%d tenant=%s task_id=%s request_id=%s duration=%.1fms",
        request.method,
        request.path,
        response.status,
        request.get(TENANT, "-"),
        request.match_info.get("task_id", request.get(TASK_ID, "-")),
        request_id,
        seconds * 1000,
    )
    return response


async def answer(
    request: web.Request, handler: Handler, request_id: str
) -> web.StreamResponse:
    """Run the handler; turn whatever it raises into an error answer."""
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err, request_id)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return error_response(http_error(err), request_id)
    except HttpProcessingError as err:
        return error_response(
            ApiError(400, "bad_request", f"malformed request: {err.message}"),
            request_id,
        )
    except (StoreError, BrokerError) as err:
        logger.error("request_id=%s backend unavailable: %r", request_id, err)
        return error_response(
            ApiError(503, "unavailable", "a backend is unavailable; try again"),
            request_id,
        )
    except Exception:
        logger.exception("request_id=%s failed", request_id)
        return error_response(
            ApiError(500, "internal_error", "an internal error; see the server log"),
            request_id,
        )


def http_error(err: web.HTTPException) -> ApiError:
    """Return the API error of one of aiohttp's HTTP errors."""
    code = {
        404: "not_found",
        405: "method_not_allowed",
        413: "too_large",
    }.get(err.status, re.sub(r"\W+", "_", (err.reason or "error").lower()))
    message = err.text or err.reason or ""
    if err.status == 404:
        message = "no such route; see /api/v1/openapi.json"
    if isinstance(err, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(err.allowed_methods))
        message = f"method {err.method} is not allowed here; allowed: {allowed}"
    headers = {k: v for k, v in err.headers.items() if k == "Allow"}
    return ApiError(err.status, code, message, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    """``/healthz``: the process is up."""
    return json_response(Health(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    """``/readyz``: the store and the broker answer, each within 2 s."""
    ctx = context_of(request)
    store = await probe(ctx.store.tenant_of_token(PROBE_HASH))
    broker = await probe(reachable(ctx.broker))
    ok = store == "ok" and broker == "ok"
    body = Health(status="ok" if ok else "unavailable", store=store, broker=broker)
    return json_response(body, 200 if ok else 503)


async def reachable(broker: Broker) -> None:
    """Raise unless the broker answers its ping."""
    if not await broker.ping():
        raise BrokerUnavailable("the broker connection is down")


async def probe(check: Awaitable[Any]) -> str:
    """Return ``ok``, or why ``check`` failed or took too long."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await check
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT:g} s"
    except (StoreError, BrokerError, OSError) as err:
        return f"unavailable: {err}"
    return "ok"


async def metrics(request: web.Request) -> web.Response:
    """``/metrics``: Prometheus text format."""
    ctx = context_of(request)
    text = await ctx.metrics.render(ctx.store, ctx.broker)
    return web.Response(text=text, headers={"Content-Type": CONTENT_TYPE})


async def openapi_document(request: web.Request) -> web.Response:
    """``/api/v1/openapi.json``: the OpenAPI 3.1 document."""
    document = openapi.build(all_routes())
    return web.Response(text=json.dumps(document), content_type="application/json")


def service_routes() -> list[Route]:
    """Return the routes of health, readiness, metrics and the document."""
    plain = {"x-media-type": "text/plain", "type": "string"}
    return [
        Route(
            "GET",
            "/healthz",
            openapi.Operation(
                "the process is up", "service", {200: Health}, auth=False
            ),
            handler=healthz,
        ),
        Route(
            "GET",
            "/readyz",
            openapi.Operation(
                "the store and the broker answer",
                "service",
                {200: Health, 503: Health},
                auth=False,
            ),
            handler=readyz,
        ),
        Route(
            "GET",
            "/metrics",
            openapi.Operation(
                "Prometheus metrics", "service", {200: plain}, auth=False
            ),
            handler=metrics,
        ),
        Route(
            "GET",
            f"{API}/openapi.json",
            openapi.Operation(
                "this document", "service", {200: {"type": "object"}}, auth=False
            ),
            handler=openapi_document,
        ),
    ]
