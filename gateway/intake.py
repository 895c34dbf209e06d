"""Documents from a request body: inline JSON, uploaded files, or JSON Lines.

Uploads and JSON Lines are read as a stream and handed to the store as an
async iterator, so the store writes them in batches while the body arrives;
nothing holds more than one document and one store batch. A limit broken
half-way raises :class:`ApiError` out of the iterator: the store then deletes
the half-made task (see ``CheckpointStore.create_task``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from gateway.api import ApiError, FieldProblem, Limits, TaskCreate
from store.models import DocumentInput, NewTask, TaskConfig

JSON_LINES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
CONFIG_FIELDS = tuple(TaskConfig.model_fields)
CHUNK = 64 * 1024


def invalid(err: ValidationError, prefix: str = "") -> ApiError:
    """Return a 422 naming every invalid field of a pydantic error."""
    fields = [
        FieldProblem(
            field=prefix + ".".join(str(p) for p in e["loc"]) or "body",
            message=e["msg"],
        )
        for e in err.errors()
    ]
    summary = "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
    return ApiError(422, "invalid_request", summary, fields=fields)


def too_large(what: str, limit: int, unit: str = "bytes") -> ApiError:
    """Return a 413 that names the limit."""
    return ApiError(413, "too_large", f"{what} exceeds the limit of {limit} {unit}")


def check_document(doc: DocumentInput, limits: Limits) -> DocumentInput:
    """Refuse a document whose text is over the size limit."""
    if doc.text is not None and len(doc.text.encode()) > limits.document_bytes:
        raise too_large(f"document {doc.doc_id!r}", limits.document_bytes)
    return doc


async def json_task(
    request: web.Request, tenant: str, limits: Limits
) -> tuple[NewTask, list[DocumentInput]]:
    """Read a ``TaskCreate`` JSON body (bounded by the body limit)."""
    try:
        raw: Any = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(422, "invalid_json", f"the body is not JSON: {err}") from err
    documents = raw.get("documents") if isinstance(raw, dict) else None
    if isinstance(documents, list) and len(documents) > limits.documents:
        raise too_large("the number of documents", limits.documents, "documents")
    try:
        body = TaskCreate.model_validate(raw)
    except ValidationError as err:
        raise invalid(err) from err
    docs = [check_document(d, limits) for d in body.documents]
    return NewTask(tenant=tenant, type=body.type, config=body.config), docs


def query_task(query: Mapping[str, str], tenant: str) -> NewTask:
    """Return the task that the query gives for an upload or JSON Lines body."""
    unknown = sorted(set(query) - {"type", *CONFIG_FIELDS})
    if unknown:
        raise ApiError(
            422,
            "invalid_request",
            f"unknown query parameters {unknown!r}; "
            f"known: type, {', '.join(CONFIG_FIELDS)}",
        )
    try:
        config = TaskConfig.model_validate(
            {k: query[k] for k in CONFIG_FIELDS if k in query}
        )
        return NewTask(tenant=tenant, type=query.get("type", ""), config=config)
    except ValidationError as err:
        raise invalid(err, "query.") from err


async def body_lines(request: web.Request, limits: Limits) -> AsyncIterator[bytes]:
    """Yield the body's lines, holding at most one line (bounded) in memory."""
    longest = 2 * limits.document_bytes + 4096
    buffer = bytearray()
    total = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        total += len(chunk)
        if total > limits.body_bytes:
            raise too_large("the request body", limits.body_bytes)
        buffer += chunk
        *lines, rest = bytes(buffer).split(b"\n")
        buffer = bytearray(rest)
        if len(buffer) > longest:
            raise too_large("a line of the JSON Lines body", longest)
        for line in lines:
            yield line
    yield bytes(buffer)


async def json_lines(
    request: web.Request, limits: Limits
) -> AsyncIterator[DocumentInput]:
    """Yield the documents of a JSON Lines body, one ``DocumentInput`` a line."""
    count = 0
    number = 0
    async for line in body_lines(request, limits):
        number += 1
        if not line.strip():
            continue
        count += 1
        if count > limits.documents:
            raise too_large("the number of documents", limits.documents, "documents")
        try:
            doc = DocumentInput.model_validate_json(line)
        except ValidationError as err:
            raise invalid(err, f"line {number}.") from err
        yield check_document(doc, limits)
    if count == 0:
        raise ApiError(422, "no_documents", "the body holds no document")


async def uploads(request: web.Request, limits: Limits) -> AsyncIterator[DocumentInput]:
    """Yield one document per uploaded file: id the file name, text UTF-8."""
    try:
        reader = await request.multipart()
    except (ValueError, HttpProcessingError) as err:
        raise bad_multipart(err) from err
    count = 0
    total = 0
    while (part := await next_part(reader)) is not None:
        if not isinstance(part, BodyPartReader) or not part.filename:
            raise ApiError(
                422,
                "invalid_request",
                "every part must be a file with a file name; give type and "
                "config as query parameters",
            )
        count += 1
        if count > limits.documents:
            raise too_large("the number of documents", limits.documents, "documents")
        data = await read_part(part, limits)
        total += len(data)
        if total > limits.body_bytes:
            raise too_large("the request body", limits.body_bytes)
        yield check_document(file_document(part.filename, data), limits)
    if count == 0:
        raise ApiError(422, "no_documents", "the body holds no file")


def bad_multipart(err: Exception) -> ApiError:
    """Return the 422 of a body that is not well-formed multipart."""
    return ApiError(422, "invalid_multipart", f"malformed multipart body: {err}")


async def next_part(reader: MultipartReader) -> Any:
    """Return the next part of a multipart body, or None at its end."""
    try:
        return await reader.next()
    except (ValueError, HttpProcessingError) as err:
        raise bad_multipart(err) from err


async def read_part(part: BodyPartReader, limits: Limits) -> bytes:
    """Read one uploaded file, refusing it once it passes the document limit."""
    data = bytearray()
    try:
        while chunk := await part.read_chunk(CHUNK):
            data += chunk
            if len(data) > limits.document_bytes:
                raise too_large(f"file {part.filename!r}", limits.document_bytes)
    except (ValueError, HttpProcessingError) as err:
        raise bad_multipart(err) from err
    return bytes(data)


def file_document(name: str, data: bytes) -> DocumentInput:
    """Return the document of one uploaded text file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(
            422,
            "not_text",
            f"file {name!r} is not UTF-8 text (byte {err.start}); upload text files",
        ) from err
    try:
        return DocumentInput(doc_id=name, text=text)
    except ValidationError as err:
        raise invalid(err, f"file {name[:40]!r}.") from err
