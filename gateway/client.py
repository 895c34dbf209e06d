"""An async HTTP client of taskpoint's REST API, used by the CLI.

It speaks the routes fixed in ``design.md`` under ``/api/v1`` with a bearer
token and returns the JSON bodies of :mod:`gateway.api` as plain dicts, so
that the CLI can print them as they came. Every error answer of the gateway
has one shape (``{"error": {"code", "message"}}``); it becomes an
:class:`ApiError` that carries the HTTP status and the server's message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from store.errors import TaskpointError

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 60.0


class ClientError(TaskpointError):
    """A request to the gateway did not succeed."""


class GatewayUnreachable(ClientError):
    """The gateway could not be reached at all."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"cannot reach the gateway at {url!r}: {why}")
        self.url = url


class ApiError(ClientError):
    """The gateway answered with an error status.

    Attributes:
        status: the HTTP status.
        code: the error code of the body (``task_not_found``), or ``http_<status>``.
        message: the server's message, as it wrote it.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_from_body(status: int, text: str) -> ApiError:
    """Return the :class:`ApiError` of an error answer, whatever its body."""
    try:
        detail = json.loads(text)["error"]
        return ApiError(status, str(detail["code"]), str(detail["message"]))
    except (ValueError, KeyError, TypeError):
        message = text.strip()[:500] or f"HTTP {status} with an empty body"
        return ApiError(status, f"http_{status}", message)


class TaskpointClient:
    """A session with one gateway, for one token; use it with ``async with``.

    Args:
        base_url: the gateway's root, for example ``http://127.0.0.1:8080``.
        token: the bearer token (None sends no ``Authorization`` header).
        timeout: seconds a request may take in all.
    """

    def __init__(
        self, base_url: str, token: str | None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TaskpointClient:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, path: str, *, body: Any = None, params: Any = None
    ) -> Any:
        """Send one request under ``/api/v1`` and return its decoded JSON.

        Raises:
            ApiError: the gateway answered 4xx or 5xx.
            GatewayUnreachable: no answer at all.
        """
        if self._session is None:
            raise RuntimeError("TaskpointClient is used outside 'async with'")
        url = self.base_url + API_PREFIX + path
        try:
            async with self._session.request(
                method, url, json=body, params=params
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            raise GatewayUnreachable(
                self.base_url, str(err) or type(err).__name__
            ) from err
        if status >= 400:
            raise error_from_body(status, text)
        return json.loads(text) if text.strip() else {}

    async def create_task(
        self,
        task_type: str,
        documents: Sequence[dict[str, str]],
        config: dict[str, Any],
    ) -> dict[str, Any]:
        """Create a task; return the gateway's answer (it carries ``task_id``)."""
        body = {"type": task_type, "documents": list(documents), "config": config}
        answer: dict[str, Any] = await self.request("POST", "/task", body=body)
        return answer

    async def list_tasks(self) -> dict[str, Any]:
        """Return the caller's tasks, newest first."""
        answer: dict[str, Any] = await self.request("GET", "/task")
        return answer

    async def status(self, task_id: str) -> dict[str, Any]:
        """Return the task's checkpoint-status."""
        answer: dict[str, Any] = await self.request(
            "GET", f"/task/{quote(task_id, safe='')}/checkpoint-status"
        )
        return answer

    async def control(
        self, task_id: str, action: str, *, doc_ids: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Request ``pause``, ``resume``, ``cancel`` or ``retry-failed``.

        Returns:
            The accepted request: its ``request_id`` and the task's ``state``.
        """
        body: dict[str, Any] | None = None
        if action == "retry-failed":
            body = {"doc_ids": list(doc_ids)} if doc_ids else {}
        answer: dict[str, Any] = await self.request(
            "POST", f"/task/{quote(task_id, safe='')}/{action}", body=body
        )
        return answer

    async def document_result(self, task_id: str, doc_id: str) -> Any:
        """Return one document's stored result."""
        path = f"/task/{quote(task_id, safe='')}/documents/{quote(doc_id, safe='')}"
        return await self.request("GET", path + "/result")

    async def task_result(self, task_id: str) -> Any:
        """Return the task's merged result, where its type has one."""
        return await self.request("GET", f"/task/{quote(task_id, safe='')}/result")

    async def documents(
        self, task_id: str, *, state: str | None = None, after: int | None = None
    ) -> dict[str, Any]:
        """Return one page of the task's documents, optionally of one state."""
        params = {
            key: str(value)
            for key, value in (("state", state), ("after", after))
            if value is not None
        }
        answer: dict[str, Any] = await self.request(
            "GET", f"/task/{quote(task_id, safe='')}/documents", params=params or None
        )
        return answer
