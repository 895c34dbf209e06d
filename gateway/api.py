"""The REST interface's bodies: what clients send and what they get back.

Every request body is validated with these models before anything happens, and
every response is built from them, so the OpenAPI document and the code cannot
drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

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


class ErrorDetail(BaseModel):
    """What went wrong, for people and for programs."""

    code: str = Field(examples=["task_not_found"])
    message: str
    request_id: str | None = None


class ErrorBody(BaseModel):
    """Every error response has this shape."""

    error: ErrorDetail


class EventTicket(BaseModel):
    """A short-lived ticket for an event stream, for browsers."""

    ticket: str
    expires_at: datetime


EventType = Literal["transition", "progress"]
