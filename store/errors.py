"""The exceptions of taskpoint.

One base class for the whole project, and a class per failure that a caller
handles differently. Messages name the value at fault.
"""

from __future__ import annotations

from typing import Any


class TaskpointError(Exception):
    """Base class of every error that taskpoint raises on purpose."""


class StoreError(TaskpointError):
    """The checkpoint store failed or refused an operation."""


class StoreUnavailable(StoreError):
    """The store could not be reached; the operation may be tried again."""


class SchemaVersionError(StoreError):
    """The data was written by a schema this code cannot read."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"store schema version {found!r} is newer than the supported "
            f"version {supported!r}; upgrade taskpoint before opening this store"
        )
        self.found = found
        self.supported = supported


class TaskNotFound(StoreError):
    """No task with this id (for this tenant)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} does not exist")
        self.task_id = task_id


class DuplicateDocument(StoreError):
    """A task was given the same document id twice."""

    def __init__(self, task_id: str, doc_id: str) -> None:
        super().__init__(f"document id {doc_id!r} appears twice in task {task_id!r}")
        self.task_id = task_id
        self.doc_id = doc_id


class TransitionRefused(TaskpointError):
    """A state transition that the state machine does not allow."""

    def __init__(self, task_id: str, current: Any, target: Any, why: str = "") -> None:
        detail = why or f"{str(current)!r} cannot move to {str(target)!r}"
        super().__init__(f"task {task_id!r} is {str(current)!r}: {detail}")
        self.task_id = task_id
        self.current = current
        self.target = target
        self.why = detail


class StaleFence(StoreError):
    """A write carried a fencing token that is no longer the document's."""

    def __init__(self, task_id: str, doc_id: str, fence: int) -> None:
        super().__init__(
            f"fencing token {fence!r} of document {doc_id!r} in task {task_id!r} "
            "is stale: another worker holds or finished it"
        )
        self.task_id = task_id
        self.doc_id = doc_id
        self.fence = fence


class DocumentNotFound(StoreError):
    """No document with this id in the task."""

    def __init__(self, task_id: str, doc_id: str) -> None:
        super().__init__(f"document {doc_id!r} does not exist in task {task_id!r}")
        self.task_id = task_id
        self.doc_id = doc_id
