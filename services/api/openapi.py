"""The OpenAPI 3.1 document, generated from the route table and the msgspec schemas."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import msgspec

from services.common.models import LIMIT_NAMES, STATUSES, Limits
from services.triggers.coordinators import ExecutionIn
from services.triggers.events import EventIn
from services.triggers.triggers import TriggerIn

from .durable_views import EventView
from .routes import Route
from .security import PUBLIC
from .views import BatchIn, CallView, FunctionView, LegacyInvoke, RuntimeIn, RuntimeView, WaitIn

SCHEMAS = (
    RuntimeIn,
    RuntimeView,
    FunctionView,
    CallView,
    Limits,
    LegacyInvoke,
    BatchIn,
    WaitIn,
    EventIn,
    EventView,
    TriggerIn,
    ExecutionIn,
)
# POST /v1/events takes one event or a list of them.
EVENTS_IN = {
    "oneOf": [
        {"$ref": "#/components/schemas/EventIn"},
        {"type": "array", "items": {"$ref": "#/components/schemas/EventIn"}},
    ]
}
ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        }
    },
}
# Operations that take an Idempotency-Key header.
IDEMPOTENT = frozenset(
    {("POST", "/invokeFunction"), ("POST", "/v1/calls"), ("POST", "/v1/functions/{name}/invoke")}
)
QUERY_TYPES = {
    "limit": "integer",
    "before": "integer",
    "after": "integer",
    "timeout": "number",
    "blocking": "boolean",
    "active": "boolean",
}
# Listings in name order page ``after`` a name, not a call number.
NAMED_LISTINGS = {"/v1/runtimes", "/v1/functions"}
# Query parameters whose values are one of a list.
QUERY_ENUMS: dict[str, tuple[str, ...]] = {"status": STATUSES}


@cache
def _components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        SCHEMAS, ref_template="#/components/schemas/{name}"
    )
    return {**components, "Error": ERROR, "EventsIn": EVENTS_IN}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "tags": [route.tag],
        "operationId": route.handler.__name__
        if route.handler.__name__ != "<lambda>"
        else "openapi",
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    params += [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {
                "type": "string"
                if route.path in NAMED_LISTINGS
                else QUERY_TYPES.get(name, "string")
            }
            | ({"enum": list(QUERY_ENUMS[name])} if name in QUERY_ENUMS else {}),
        }
        for name in route.query
    ]
    if route.handler.__name__ not in PUBLIC:
        op["security"] = [{"apiKey": []}, {}]  # a key when the api asks for keys
    if (route.method, route.path) in IDEMPOTENT:
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            }
        )
    if params:
        op["parameters"] = params
    if route.body == "multipart":
        op["requestBody"] = {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "module": {"type": "string", "format": "binary"},
                            "runtime": {"type": "string"},
                            **{name: {"type": "number"} for name in LIMIT_NAMES},
                        },
                        "required": ["module"],
                    }
                }
            },
        }
    elif route.body == "archive":
        # One media type documented (the Door takes every one of ARCHIVE_TYPES): fuzzers
        # generate bytes for this one.
        op["requestBody"] = {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"format": "binary"}}},
        }
    elif route.body == "binary":
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    elif route.body == "params":
        op["requestBody"] = {"content": {"application/json": {"schema": {}}}}
    elif route.body is not None:
        name = route.body.split(":", 1)[1]
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    codes = {*route.responses, 403}  # any request: a foreign origin or Host name
    if "{" in route.path:
        codes.add(404)  # a path parameter that names nothing (or is empty: no route)
    if route.handler.__name__ not in PUBLIC:
        codes.add(401)  # when the api asks for keys
    if route.body is not None:
        codes |= {413, 415}
    if "{" in route.path:
        codes.add(404)  # nothing of that name (or number) is there
    op["responses"] = {
        str(code): (
            {
                "description": "error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
            if code >= 400
            else {"description": "no content" if code == 204 else "ok"}
        )
        for code in sorted(codes)
    }
    return op


def openapi_document(routes: tuple[Route, ...]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fum",
            "version": "1",
            "description": "fum: a self-hosted Function-as-a-Service cluster",
        },
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
