"""Writing answers: pydantic bodies as JSON, errors as ``ErrorBody``."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from gateway.api import ApiError, ErrorBody, ErrorDetail

JSON = "application/json"


def json_response(body: BaseModel, status: int = 200) -> web.Response:
    """Return ``body`` serialized by its model."""
    return web.Response(
        status=status, text=body.model_dump_json(exclude_none=False), content_type=JSON
    )


def error_response(err: ApiError, request_id: str | None) -> web.Response:
    """Return the one error shape of the API."""
    body = ErrorBody(
        error=ErrorDetail(
            code=err.code,
            message=err.message,
            request_id=request_id,
            fields=err.fields,
        )
    )
    response = json_response(body, err.status)
    response.headers.update(err.headers)
    return response
