"""The route table: every route of the gateway with what OpenAPI says of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from actors.messages import ControlAction
from gateway import events, web_control, web_tasks
from gateway.api import (
    ControlAccepted,
    DocumentPage,
    DocumentResult,
    EventTicket,
    RetryFailed,
    TaskCreate,
    TaskList,
    TaskResult,
    TaskStatus,
    TaskSummary,
)
from gateway.openapi import Documented, Operation, Param
from store.models import TaskConfig
from store.states import DocumentState, TaskState

API = "/api/v1"
TASK = f"{API}/task/{{task_id}}"

LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000})
AFTER = Param(
    "after", "query", {"type": "integer", "minimum": -1}, "seq of the last one seen"
)
UPLOAD_QUERY = (
    Param(
        "type",
        "query",
        {"type": "string", "minLength": 1, "maxLength": 64},
        "the task's type; multipart and JSON Lines bodies only (required there)",
    ),
    *(
        Param(
            name,
            "query",
            TaskConfig.model_json_schema()["properties"][name],
            "task config; multipart and JSON Lines bodies only",
        )
        for name in TaskConfig.model_fields
    ),
)
FILES = {
    "type": "object",
    "description": "one part per text file (UTF-8); the file name is the doc_id",
    "additionalProperties": {"type": "string", "contentMediaType": "text/plain"},
}
JSON_LINES = {
    "type": "string",
    "description": "one DocumentInput JSON object per line",
}
EVENT_STREAM = {
    "x-media-type": "text/event-stream",
    "type": "string",
    "description": (
        "events 'transition' (id: history seq; a TransitionEvent, refused "
        "requests with accepted=false) and 'progress' (a ProgressEvent, about "
        "once a second while the task is live); ends after the final transition"
    ),
}


@dataclass(frozen=True)
class Route(Documented):
    """A documented route and its handler."""

    handler: Any = None


def control_route(action: ControlAction) -> Route:
    """Return the route of one control action."""
    request = (
        {"application/json": RetryFailed}
        if action is ControlAction.RETRY_FAILED
        else {}
    )
    return Route(
        "POST",
        f"{TASK}/{action}",
        Operation(
            summary=f"request {action}",
            tag="control",
            responses={202: ControlAccepted, 409: None, 503: None},
            request=request,
            request_required=False,
            description=(
                "409 when the task's state does not allow it (recorded in its "
                "history); 503 when the broker cannot take the request."
            ),
        ),
        handler=web_control.control_handler(action),
    )


def task_routes() -> list[Route]:
    """Return the routes of tasks, documents and results."""
    return [
        Route(
            "POST",
            f"{API}/task",
            Operation(
                summary="create a task",
                tag="tasks",
                responses={201: TaskSummary, 413: None, 415: None},
                request={
                    "application/json": TaskCreate,
                    "multipart/form-data": FILES,
                    "application/x-ndjson": JSON_LINES,
                },
                params=UPLOAD_QUERY,
                description=(
                    "Documents inline (JSON), as uploaded text files (multipart), "
                    "or as JSON Lines; with the latter two, type and config come "
                    "as query parameters. 413 names the limit that was passed."
                ),
            ),
            handler=web_tasks.create,
        ),
        Route(
            "GET",
            f"{API}/task",
            Operation(
                summary="list the caller's tasks, newest first",
                tag="tasks",
                responses={200: TaskList},
                params=(
                    LIMIT,
                    Param("state", "query", {"enum": [str(s) for s in TaskState]}),
                    Param("before", "query", {"type": "string", "format": "date-time"}),
                ),
            ),
            handler=web_tasks.list_tasks,
        ),
        Route(
            "GET",
            f"{TASK}/checkpoint-status",
            Operation(
                summary="detailed status from the counters",
                tag="tasks",
                responses={200: TaskStatus},
                params=(
                    Param(
                        "failed_limit",
                        "query",
                        {"type": "integer", "minimum": 0, "maximum": 1000},
                    ),
                    Param("failed_after", "query", {"type": "integer", "minimum": -1}),
                ),
            ),
            handler=web_tasks.status,
        ),
        Route(
            "GET",
            f"{TASK}/documents",
            Operation(
                summary="documents in order, paged, by state",
                tag="tasks",
                responses={200: DocumentPage},
                params=(
                    LIMIT,
                    AFTER,
                    Param("state", "query", {"enum": [str(s) for s in DocumentState]}),
                ),
            ),
            handler=web_tasks.documents,
        ),
        Route(
            "GET",
            f"{TASK}/documents/{{doc_id}}/result",
            Operation(
                summary="one document's result",
                tag="tasks",
                responses={200: DocumentResult},
            ),
            handler=web_tasks.document_result,
        ),
        Route(
            "GET",
            f"{TASK}/result",
            Operation(
                summary="the task's merged result, where its type has one",
                tag="tasks",
                responses={200: TaskResult},
                description="404 no_merged_result until the task's type stores one.",
            ),
            handler=web_tasks.task_result,
        ),
    ]


def event_routes() -> list[Route]:
    """Return the routes of the event stream and its tickets."""
    return [
        Route(
            "GET",
            f"{TASK}/events",
            Operation(
                summary="Server-Sent Events: history from since, then live",
                tag="events",
                responses={200: EVENT_STREAM},
                params=(
                    Param("since", "query", {"type": "integer", "minimum": 0}),
                    Param("ticket", "query", {"type": "string"}, "instead of a token"),
                    Param("Last-Event-ID", "header", {"type": "string"}),
                ),
            ),
            handler=events.events,
        ),
        Route(
            "POST",
            f"{TASK}/events/ticket",
            Operation(
                summary="a single-use ticket (60 s) for a browser's event stream",
                tag="events",
                responses={201: EventTicket},
            ),
            handler=events.ticket,
        ),
    ]


def api_routes() -> list[Route]:
    """Return every documented route of ``/api/v1`` but the document itself."""
    controls = [control_route(a) for a in ControlAction]
    return [*task_routes(), *controls, *event_routes()]


def add_routes(app: web.Application, routes: list[Route]) -> None:
    """Register ``routes`` on the application's router."""
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
