"""The OpenAPI 3.1 document, generated from the route table: every schema is msgspec's of
the types the views decode and encode (``Route.body``, ``Route.reply``), so the document
cannot drift from what the api does (docs/OPERATIONS.md, "The API's description")."""

from __future__ import annotations

import re
from functools import cache
from http import HTTPStatus
from typing import Any

import msgspec

from services.common.models import LIMIT_NAMES, STATUSES

from .routes import Route
from .security import PUBLIC
from .views import ErrorBody

ERROR = "#/components/schemas/ErrorBody"
# Operations that take an Idempotency-Key header.
IDEMPOTENT = frozenset(
    {("POST", "/invokeFunction"), ("POST", "/v1/calls"), ("POST", "/v1/functions/{name}/invoke")}
)
QUERY_TYPES = {
    "limit": "integer",
    "before": "integer",
    "after": "integer",
    "timeout": "number",
    "wait": "number",
    "blocking": "boolean",
    "active": "boolean",
}
# Listings in name order page ``after`` a name, not a call number.
NAMED_LISTINGS = {"/v1/runtimes", "/v1/functions"}
# Query parameters whose values are one of a list.
QUERY_ENUMS: dict[str, tuple[str, ...]] = {"status": STATUSES}
# What the statuses every route of a kind may answer mean (the others: their own phrase).
MEANINGS = {
    401: "no API key, or not one of the api's (when it asks for keys: docs/SECURITY.md)",
    403: "a foreign page's origin, or a Host name the api does not answer to",
    404: "nothing of that name (or number)",
    413: "the body is larger than the api takes (FUM_MAX_JSON_MB, FUM_MAX_PACKAGE_MB)",
    415: "a Content-Type this route does not take",
    429: "too many calls waiting: try again after Retry-After seconds",
    503: "a service the answer needs does not answer (the db, the keeper), or the api stops",
}
HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    429: {"Retry-After": {"schema": {"type": "integer"}}},
}
SECURITY = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key of the api's FUM_API_KEYS file, as `Authorization: "
        "Bearer <key>`; an api without keys (none configured) takes every request "
        "(docs/SECURITY.md)",
    }
}


def _types(routes: tuple[Route, ...]) -> list[Any]:
    """Every type a route's JSON body is decoded as or its answer encoded from, once."""
    found: dict[Any, None] = {ErrorBody: None}
    for route in routes:
        if route.body is not None and not isinstance(route.body, str):
            found[route.body] = None
        replies = route.reply if isinstance(route.reply, tuple) else (route.reply,)
        for reply in replies:
            if reply is not None and not isinstance(reply, str):
                found[reply] = None
    return list(found)


@cache
def _schemas(routes: tuple[Route, ...]) -> tuple[dict[Any, Any], dict[str, Any]]:
    """The schema of each type (a reference, mostly) and the components they refer to,
    as msgspec encodes and decodes them."""
    types = _types(routes)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    return dict(zip(types, schemas, strict=True)), components


def _reply(route: Route, schemas: dict[Any, Any]) -> dict[str, Any]:
    if route.reply is None:
        return {}
    if isinstance(route.reply, tuple) and all(isinstance(r, str) for r in route.reply):
        return {"content": {media: {"schema": {"type": "string"}} for media in route.reply}}
    if isinstance(route.reply, tuple):
        schema = {"anyOf": [schemas[r] for r in route.reply]}
    else:
        schema = schemas[route.reply]
    return {"content": {"application/json": {"schema": schema}}}


def _operation(route: Route, schemas: dict[Any, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "tags": [route.tag],
        "operationId": route.handler.__name__,
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
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas[route.body]}},
        }
    codes = {*route.responses, 403}  # any request: a foreign origin or Host name
    if route.handler.__name__ not in PUBLIC:
        codes.add(401)  # when the api asks for keys
    if route.body is not None:
        codes |= {413, 415}
    op["responses"] = {str(code): _response(route, code, schemas) for code in sorted(codes)}
    return op


def _response(route: Route, code: int, schemas: dict[Any, Any]) -> dict[str, Any]:
    if code == 204:
        return {"description": "no content"}
    if code < 400:
        return {"description": HTTPStatus(code).phrase, **_reply(route, schemas)}
    response = {
        "description": MEANINGS.get(code) or HTTPStatus(code).phrase,
        "content": {"application/json": {"schema": {"$ref": ERROR}}},
    }
    if code in HEADERS:
        response["headers"] = HEADERS[code]
    return response


def openapi_document(routes: tuple[Route, ...]) -> dict[str, Any]:
    schemas, components = _schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fum",
            "version": "1",
            "description": "fum: a self-hosted Function-as-a-Service cluster",
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY},
    }
