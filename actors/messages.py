"""The messages that travel on the broker: control requests and document jobs.

Both are validated on arrival; a message that does not validate is
dead-lettered with the reason, never half-applied. Job messages carry ids
only: a document's text lives once, in the store.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from store.models import MAX_DOC_ID_LENGTH

TASK_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_JOB_DOCUMENTS = 1000
MAX_RETRY_DOC_IDS = 10_000


class ControlAction(StrEnum):
    """What an operator may ask of a task."""

    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    RETRY_FAILED = "retry-failed"


class ControlMessage(BaseModel):
    """A control request, from the gateway or published by hand on the queue.

    ``retry_failed`` is accepted as a spelling of ``retry-failed``;
    ``doc_ids`` narrows a retry-failed to those documents and is refused with
    any other action.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str = Field(pattern=TASK_ID_PATTERN)
    action: ControlAction
    doc_ids: tuple[str, ...] | None = Field(
        None, min_length=1, max_length=MAX_RETRY_DOC_IDS
    )
    request_id: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("action", mode="before")
    @classmethod
    def _underscore_spelling(cls, value: Any) -> Any:
        return value.replace("_", "-") if isinstance(value, str) else value

    @field_validator("doc_ids")
    @classmethod
    def _id_lengths(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for doc_id in value or ():
            if not 0 < len(doc_id) <= MAX_DOC_ID_LENGTH:
                raise ValueError(f"document id {doc_id[:40]!r} has a bad length")
        return value

    @model_validator(mode="after")
    def _doc_ids_only_for_retry(self) -> Self:
        if self.doc_ids is not None and self.action is not ControlAction.RETRY_FAILED:
            raise ValueError(
                f"doc_ids goes with action 'retry-failed', not {str(self.action)!r}"
            )
        return self


def control_message_schema() -> dict[str, Any]:
    """Return the JSON Schema of :class:`ControlMessage` as ``docs/`` publishes it.

    It lists ``retry_failed`` beside ``retry-failed``, since both are accepted.
    """
    schema = ControlMessage.model_json_schema()
    action = schema["$defs"]["ControlAction"]
    action["enum"] = [*action["enum"], "retry_failed"]
    return schema


class DocumentJob(BaseModel):
    """Work for a worker: some documents of one task, by id only.

    ``suspect`` marks a document whose last attempt was lost with its worker:
    it may be the one that killed the worker, so it runs alone.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str = Field(pattern=TASK_ID_PATTERN)
    doc_ids: tuple[str, ...] = Field(min_length=1, max_length=MAX_JOB_DOCUMENTS)
    suspect: bool = False
