"""The OpenAPI 3.1 document, generated from the route table and ``api.py``.

Each route of ``gateway/app.py`` carries an :class:`Operation`; the document
is built from those and from the pydantic models' JSON Schemas (draft
2020-12, which OpenAPI 3.1 uses as is), so the routes, the bodies and the
document cannot drift apart. ``tests/gateway/test_openapi.py`` walks the
router and checks both directions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.api import ErrorBody

Mode = Literal["validation", "serialization"]
REF = "#/components/schemas/{model}"
ERRORS = {
    401: "no token, or a wrong one",
    404: "no such task for this tenant",
    422: "invalid request; the fields are named",
}


@dataclass(frozen=True)
class Param:
    """A query or path parameter."""

    name: str
    where: Literal["query", "path", "header"]
    schema: Mapping[str, Any]
    description: str = ""
    required: bool = False

    def document(self) -> dict[str, Any]:
        """Return the parameter object."""
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required or self.where == "path",
            "schema": dict(self.schema),
            "description": self.description,
        }


@dataclass(frozen=True)
class Operation:
    """What the document says about one route."""

    summary: str
    tag: str
    responses: Mapping[int, type[BaseModel] | Mapping[str, Any] | None]
    auth: bool = True
    request: Mapping[str, type[BaseModel] | Mapping[str, Any]] = field(
        default_factory=dict
    )
    request_required: bool = True
    params: tuple[Param, ...] = ()
    description: str = ""
    errors: tuple[int, ...] = (401, 404, 422)


@dataclass(frozen=True)
class Documented:
    """One route as the document sees it."""

    method: str
    path: str
    operation: Operation


class Schemas:
    """Collects the models' JSON Schemas under ``components/schemas``."""

    def __init__(self, routes: Iterable[Documented]) -> None:
        wanted: set[tuple[type[BaseModel], Mode]] = {(ErrorBody, "serialization")}
        for route in routes:
            op = route.operation
            wanted |= {(m, "validation") for m in models(op.request.values())}
            wanted |= {(m, "serialization") for m in models(op.responses.values())}
        keyed = sorted(wanted, key=lambda pair: (pair[0].__name__, pair[1]))
        self.refs, top = models_json_schema(keyed, ref_template=REF)
        self.components: dict[str, Any] = top.get("$defs", {})

    def of(self, body: type[BaseModel] | Mapping[str, Any], mode: Mode) -> Any:
        """Return the schema (a reference for a model) of one body."""
        if isinstance(body, type):
            return self.refs[(body, mode)]
        return dict(body)


def models(bodies: Iterable[Any]) -> list[type[BaseModel]]:
    """Return the pydantic models among some bodies."""
    return [b for b in bodies if isinstance(b, type) and issubclass(b, BaseModel)]


def operation_document(route: Documented, schemas: Schemas) -> dict[str, Any]:
    """Return the operation object of one route."""
    op = route.operation
    doc: dict[str, Any] = {
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": operation_id(route),
        "parameters": [p.document() for p in op.params],
        "responses": responses(op, schemas),
    }
    if op.description:
        doc["description"] = op.description
    if op.request:
        doc["requestBody"] = {
            "required": op.request_required,
            "content": {
                kind: {"schema": schemas.of(body, "validation")}
                for kind, body in op.request.items()
            },
        }
    if op.auth:
        doc["security"] = [{"bearer": []}]
    else:
        doc["security"] = []
    return doc


def responses(op: Operation, schemas: Schemas) -> dict[str, Any]:
    """Return the responses of one operation; errors share ``ErrorBody``."""
    error = {"application/json": {"schema": schemas.of(ErrorBody, "serialization")}}
    out: dict[str, Any] = {}
    for status, body in op.responses.items():
        out[str(status)] = {"description": describe(status)}
        if body is not None:
            kind = "application/json"
            if isinstance(body, Mapping) and "x-media-type" in body:
                kind = body["x-media-type"]
                body = {k: v for k, v in body.items() if k != "x-media-type"}
            out[str(status)]["content"] = {
                kind: {"schema": schemas.of(body, "serialization")}
            }
    for status in op.errors if op.auth else ():
        out.setdefault(
            str(status), {"description": ERRORS.get(status, ""), "content": error}
        )
    out["default"] = {"description": "an error", "content": error}
    return out


def describe(status: int) -> str:
    """Return a short description of a success status."""
    return {
        200: "OK",
        201: "created",
        202: "accepted; the outcome arrives in the events",
    }.get(status, "see the error body")


def operation_id(route: Documented) -> str:
    """Return an id like ``get_task_checkpoint_status``."""
    words = [w.strip("{}") for w in route.path.removeprefix("/api/v1").split("/") if w]
    return "_".join([route.method.lower(), *words]).replace("-", "_")


def build(routes: Iterable[Documented], *, version: str = "0.1.0") -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of ``routes``."""
    routes = list(routes)
    schemas = Schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = operation_document(
            route, schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskpoint",
            "version": version,
            "description": "Long LLM document jobs with a checkpoint per document.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
