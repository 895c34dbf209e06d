"""Handlers of tasks and their documents: create, list, status, pages, results.

Every handler authenticates first and reads only the caller's tenant's tasks:
another tenant's task is "not found", exactly like a task that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from actors.errors import BrokerError
from gateway import intake
from gateway.api import ApiError, DocumentPage, DocumentResult, TaskList, TaskResult
from gateway.context import TASK_ID, context_of
from gateway.responses import json_response
from gateway.views import document_view, task_status, task_summary
from store.errors import DocumentNotFound, DuplicateDocument, TaskNotFound
from store.models import DocumentInput, NewTask, Task
from store.states import DocumentState, TaskState

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=StrEnum)

STORE_BATCH = 500
MAX_PAGE = 1000
DEFAULT_PAGE = 100


async def load_task(request: web.Request) -> Task:
    """Authenticate and return the path's task, if it is the caller's.

    Raises:
        ApiError: 401 without a valid token, 404 when the caller has no such task.
    """
    ctx = context_of(request)
    tenant = await ctx.auth.tenant(request)
    return await tenant_task(request, tenant)


async def tenant_task(request: web.Request, tenant: str) -> Task:
    """Return the path's task of ``tenant``, or raise a 404."""
    task_id = request.match_info["task_id"]
    try:
        return await context_of(request).store.get_task(task_id, tenant)
    except TaskNotFound as err:
        raise not_found("task_not_found", f"task {task_id!r} does not exist") from err


def not_found(code: str, message: str) -> ApiError:
    """Return a 404 error."""
    return ApiError(404, code, message)


def int_query(
    request: web.Request, name: str, default: int, low: int, high: int
) -> int:
    """Return an integer query parameter within ``[low, high]``, or raise 422."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(
            422,
            "invalid_request",
            f"query parameter {name!r} must be an integer from {low} to {high}, "
            f"not {raw[:40]!r}",
        )
    return value


def enum_query(request: web.Request, name: str, kind: type[E]) -> E | None:
    """Return an enum query parameter, or None when absent; raise 422 if unknown."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError as err:
        known = ", ".join(str(k) for k in kind)
        raise ApiError(
            422, "invalid_request", f"{name} {raw[:40]!r} is not one of: {known}"
        ) from err


async def create(request: web.Request) -> web.Response:
    """``POST /api/v1/task``: create a task from JSON, uploads or JSON Lines."""
    ctx = context_of(request)
    tenant = await ctx.auth.tenant(request)
    limit = ctx.limits.body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise intake.too_large("the request body", limit)
    new, documents = await read_task(request, tenant)
    try:
        task = await ctx.store.create_task(new, documents, batch_size=STORE_BATCH)
    except DuplicateDocument as err:
        raise ApiError(
            422, "duplicate_document", f"document id {err.doc_id!r} appears twice"
        ) from err
    request[TASK_ID] = task.task_id
    logger.info(
        "task created task_id=%s tenant=%s documents=%d",
        task.task_id,
        tenant,
        task.total_documents,
    )
    # Wake the supervisors: the one that wins the compare-and-set starts the
    # task now instead of at its next sweep (which starts it anyway).
    with contextlib.suppress(BrokerError, OSError, TimeoutError):
        async with asyncio.timeout(2):
            await ctx.broker.broadcast(
                json.dumps({"task_id": task.task_id, "state": "pending"}).encode()
            )
    response = json_response(task_summary(task), 201)
    response.headers["Location"] = f"/api/v1/task/{task.task_id}/checkpoint-status"
    return response


async def read_task(
    request: web.Request, tenant: str
) -> tuple[NewTask, Iterable[DocumentInput] | AsyncIterator[DocumentInput]]:
    """Return the new task and its documents for the body's content type."""
    limits = context_of(request).limits
    kind = request.content_type
    if kind == "application/json":
        if request.query:
            raise ApiError(
                422,
                "invalid_request",
                "a JSON body carries type and config itself; query parameters "
                "go with multipart and JSON Lines bodies",
            )
        return await intake.json_task(request, tenant, limits)
    if kind == "multipart/form-data":
        return intake.query_task(request.query, tenant), intake.uploads(request, limits)
    if kind in intake.JSON_LINES:
        return intake.query_task(request.query, tenant), intake.json_lines(
            request, limits
        )
    raise ApiError(
        415,
        "unsupported_media_type",
        f"content type {kind!r} is not accepted; send application/json, "
        "multipart/form-data or application/x-ndjson",
    )


async def list_tasks(request: web.Request) -> web.Response:
    """``GET /api/v1/task``: the caller's tasks, newest first, paged by ``before``."""
    ctx = context_of(request)
    tenant = await ctx.auth.tenant(request)
    limit = int_query(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    state = enum_query(request, "state", TaskState)
    before = datetime_query(request, "before")
    tasks = await ctx.store.list_tasks(
        tenant, states=None if state is None else [state], limit=limit, before=before
    )
    next_before = tasks[-1].created_at if len(tasks) == limit else None
    return json_response(
        TaskList(tasks=[task_summary(t) for t in tasks], next_before=next_before)
    )


def datetime_query(request: web.Request, name: str) -> datetime | None:
    """Return an ISO 8601 query parameter (with a zone), or raise 422."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = TypeAdapter(datetime).validate_python(raw)
    except ValidationError as err:
        raise intake.invalid(err, f"query.{name}") from err
    if value.tzinfo is None:
        raise ApiError(422, "invalid_request", f"{name} must carry a time zone")
    return value


async def status(request: web.Request) -> web.Response:
    """``GET .../checkpoint-status``: counters, timestamps and failed documents."""
    ctx = context_of(request)
    tenant = await ctx.auth.tenant(request)
    task_id = request.match_info["task_id"]
    limit = int_query(request, "failed_limit", 20, 0, MAX_PAGE)
    after = int_query(request, "failed_after", -1, -1, 2**62)
    store = ctx.store
    try:
        # The task and its counters in one call: nothing cached, nothing
        # read per document.
        task, counts = await store.task_status(task_id, tenant)
    except TaskNotFound as err:
        raise not_found("task_not_found", f"task {task_id!r} does not exist") from err
    request[TASK_ID] = task_id
    failed = []
    # Counters first: a task without failures needs no page read at all.
    if counts.failed and limit:
        failed = await store.page_documents(
            task.task_id, state=DocumentState.FAILED, after=after, limit=limit
        )
    estimated = ctx.settings.llm_backend == "local"
    return json_response(task_status(task, counts, failed, limit, estimated=estimated))


async def documents(request: web.Request) -> web.Response:
    """``GET .../documents``: documents in order after ``after``, by ``state``."""
    task = await load_task(request)
    limit = int_query(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = int_query(request, "after", -1, -1, 2**62)
    state = enum_query(request, "state", DocumentState)
    page = await context_of(request).store.page_documents(
        task.task_id, state=state, after=after, limit=limit
    )
    return json_response(
        DocumentPage(
            documents=[document_view(d) for d in page],
            next_after=page[-1].seq if len(page) == limit else None,
        )
    )


async def document_result(request: web.Request) -> web.Response:
    """``GET .../documents/{doc_id}/result``: a document's stored result."""
    task = await load_task(request)
    doc_id = request.match_info["doc_id"]
    store = context_of(request).store
    try:
        await store.get_document(task.task_id, doc_id)
    except DocumentNotFound as err:
        raise not_found("document_not_found", str(err)) from err
    result = await store.get_result(task.task_id, doc_id)
    if result is None:
        raise not_found("no_result", f"document {doc_id!r} has no result yet")
    return json_response(
        DocumentResult(task_id=task.task_id, doc_id=doc_id, result=result)
    )


async def task_result(request: web.Request) -> web.Response:
    """``GET .../result``: the task's merged result, for types that merge.

    The finalize phase (GraphRAG's merged graph) checkpoints it batch by batch;
    while the task is still finalizing the answer is the merge so far.
    """
    task = await load_task(request)
    state = await context_of(request).store.get_task_result(task.task_id)
    if not state or state.get("result") is None:
        raise not_found(
            "no_merged_result",
            f"task {task.task_id!r} of type {task.type!r} has no merged result",
        )
    body = TaskResult(
        task_id=task.task_id,
        result=state["result"],
        documents_merged=int(state.get("documents", 0)),
        final=task.state in (TaskState.COMPLETED, TaskState.COMPLETED_WITH_FAILURES),
    )
    return json_response(body)
