"""The REST interface's bodies: what clients send and what they get back.

Every request body is validated with these models before anything happens, and
every response is built from them, so the OpenAPI document and the code cannot
drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from store.models import DocumentError, DocumentInput, TaskConfig
from store.states import DocumentState, TaskState

MAX_DOCUMENTS_PER_REQUEST = 10_000
MAX_DOCUMENT_BYTES = 2 * 2**20
MAX_BODY_BYTES = 64 * 2**20


class Body(BaseModel):
    """Base of the request bodies: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class TaskCreate(Body):
    """``POST /api/v1/task``: a task's type, its documents and its config."""

    type: str = Field(min_length=1, max_length=64, examples=["raptor"])
    documents: list[DocumentInput] = Field(
        min_length=1, max_length=MAX_DOCUMENTS_PER_REQUEST
    )
    config: TaskConfig = TaskConfig()


class RetryFailed(Body):
    """``POST .../retry-failed``: optionally only some failed documents."""

    doc_ids: list[str] | None = Field(None, min_length=1, max_length=10_000)


class Tokens(BaseModel):
    """Tokens spent, in the provider's parts."""

    prompt: int
    completion: int
    total: int


class FailedDocument(BaseModel):
    """A failed document in a status: its id, attempts and last error."""

    doc_id: str
    attempts: int
    error: DocumentError | None


class TaskStatus(BaseModel):
    """``GET .../checkpoint-status``: where a task stands, from its counters."""

    task_id: str
    type: str
    state: TaskState
    progress: float = Field(ge=0, le=1, description="finished documents / total")
    total_documents: int
    completed_documents: int
    failed_documents: int
    pending_documents: int
    running_documents: int
    retry_wait_documents: int
    cancelled_documents: int
    token_count: Tokens
    tokens_estimated: bool = Field(
        description="true when the counts are estimates (the local backend)"
    )
    tokens_to_spend: int | None = Field(
        description="estimate for the open documents, at the pace so far"
    )
    token_budget: int | None = Field(description="the task's budget, if any")
    created_at: datetime
    started_at: datetime | None
    paused_at: datetime | None
    resumed_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    throughput: float | None = Field(description="documents finished per second")
    eta_seconds: float | None = Field(description="at that pace, until the end")
    can_pause: bool
    reason: str | None = Field(description="why the system paused or failed it")
    failed: list[FailedDocument] = Field(description="a page of failed documents")
    failed_next: int | None = Field(description="pass as failed_after for more")


class TaskSummary(BaseModel):
    """One task in a list."""

    task_id: str
    type: str
    state: TaskState
    progress: float
    total_documents: int
    completed_documents: int
    failed_documents: int
    token_count: Tokens
    created_at: datetime


class TaskList(BaseModel):
    """``GET /api/v1/task``: the caller's tasks, newest first."""

    tasks: list[TaskSummary]
    next_before: datetime | None = Field(description="pass as before for more")


class ControlAccepted(BaseModel):
    """A control request published: its outcome arrives in the task's events."""

    request_id: str
    task_id: str
    action: str
    state: TaskState = Field(description="the task's state when the request left")


class AttemptView(BaseModel):
    """One attempt at a document."""

    attempt: int
    outcome: str
    started_at: datetime
    finished_at: datetime | None
    tokens: Tokens
    error: DocumentError | None


class DocumentView(BaseModel):
    """One document's checkpoint."""

    doc_id: str
    seq: int
    state: DocumentState
    attempts: int
    error: DocumentError | None
    token_count: Tokens
    next_attempt_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    has_result: bool
    attempt_log: list[AttemptView]


class DocumentPage(BaseModel):
    """``GET .../documents``: a page of documents in order."""

    documents: list[DocumentView]
    next_after: int | None = Field(description="pass as after for the next page")


class FieldProblem(BaseModel):
    """One invalid field of a request: where it is and what is wrong."""

    field: str = Field(description="dotted path, e.g. documents.3.text")
    message: str


class ErrorDetail(BaseModel):
    """What went wrong, for people and for programs."""

    code: str = Field(examples=["task_not_found"])
    message: str
    request_id: str | None = None
    fields: list[FieldProblem] | None = Field(
        None, description="the invalid fields, for validation errors"
    )


class ErrorBody(BaseModel):
    """Every error response has this shape."""

    error: ErrorDetail


class EventTicket(BaseModel):
    """A short-lived ticket for an event stream, for browsers."""

    ticket: str
    expires_at: datetime


class DocumentResult(BaseModel):
    """``GET .../documents/{doc_id}/result``: what the processor returned."""

    task_id: str
    doc_id: str
    result: dict[str, Any]


class TaskResult(BaseModel):
    """``GET .../result``: the task's merged result, for types that merge."""

    task_id: str
    result: dict[str, Any]
    documents_merged: int = Field(description="completed documents merged so far")
    final: bool = Field(description="false while the task is still finalizing")


class TransitionEvent(BaseModel):
    """SSE event ``transition``: one history entry (its ``seq`` is the event id).

    Refused control requests are included with ``accepted: false``.
    """

    seq: int
    from_state: TaskState | None
    to_state: TaskState
    at: datetime
    reason: str | None
    request_id: str | None
    accepted: bool


class ProgressEvent(BaseModel):
    """SSE event ``progress``: the task's counters, about once a second."""

    task_id: str
    state: TaskState
    progress: float
    total_documents: int
    completed_documents: int
    failed_documents: int
    pending_documents: int
    running_documents: int
    retry_wait_documents: int
    cancelled_documents: int
    token_count: Tokens
    throughput: float | None
    eta_seconds: float | None


class Health(BaseModel):
    """``/healthz`` and ``/readyz``."""

    status: Literal["ok", "unavailable"]
    store: str | None = None
    broker: str | None = None


EventType = Literal["transition", "progress"]


@dataclass(frozen=True)
class Limits:
    """What one request may carry; each refusal names the limit it broke."""

    body_bytes: int = MAX_BODY_BYTES
    document_bytes: int = MAX_DOCUMENT_BYTES
    documents: int = MAX_DOCUMENTS_PER_REQUEST


@dataclass
class ApiError(Exception):
    """An error answer: raised anywhere below a handler, written as ErrorBody."""

    status: int
    code: str
    message: str
    fields: list[FieldProblem] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"
