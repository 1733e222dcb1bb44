"""The OpenAPI 3.1 document of the admin API, served at ``GET /api/openapi.json``.

Written by hand next to the routes; ``tests/test_admin_api.py`` checks that it names exactly
the routes the app serves.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bot.admin.ports import ConversationView, MessageView, Stats, UserView

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_TYPES = {"int": "integer", "str": "string", "bool": "boolean", "float": "number"}


def _object(view: type) -> dict[str, Any]:
    """A JSON schema for a view dataclass, from its field annotations."""
    properties: dict[str, Any] = {}
    for field in dataclasses.fields(view):
        if str(field.type).startswith("list["):
            properties[field.name] = {"type": "array", "items": {"type": "object"}}
            continue
        kinds = [part.strip() for part in str(field.type).split("|")]
        types = ["null" if kind == "None" else _TYPES.get(kind, "string") for kind in kinds]
        schema: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
        if "datetime" in kinds:
            schema["format"] = "date-time"
        properties[field.name] = schema
    return {"type": "object", "properties": properties, "required": list(properties)}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid request",
        401: "no valid token",
        404: "unknown id",
        429: "too many attempts",
        503: "a dependency is down",
    }
    return {
        str(code): {
            "description": text[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "200": {"description": description, "content": {"application/json": {"schema": schema}}}
    }


def _query(name: str, kind: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": kind},
        "description": description,
    }


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
            "next_cursor": {"type": ["integer", "null"]},
        },
    }


_CHECK = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string"},
        "duration_ms": {"type": "number"},
        "error": {"type": "string"},
    },
}
_HEALTH = {
    "type": "object",
    "properties": {
        "status": {"enum": ["ok", "degraded", "unavailable"]},
        "checks": {"type": "object", "additionalProperties": _CHECK},
        "adapters": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "status": {"enum": ["ok", "degraded", "disabled"]},
                    "last_message_at": {"type": ["string", "null"], "format": "date-time"},
                    "failed_last_hour": {"type": "integer"},
                },
            },
        },
        "queue": {"type": "object", "properties": {"depth": {"type": ["integer", "null"]}}},
    },
}

_STATS = _object(Stats)
_STATS["properties"]["days"] = {"type": "integer"}
_STATS["required"].append("days")

_PAGING = [
    _query("limit", "integer", "items per page (1-100, default 50)"),
    _query("cursor", "integer", "next_cursor of the previous page"),
]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Zapa admin API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "Error": _ERROR,
            "Conversation": _object(ConversationView),
            "Message": _object(MessageView),
            "User": _object(UserView),
            "Stats": _STATS,
            "Health": _HEALTH,
        },
    },
    "paths": {
        "/api/auth/login": {
            "post": {
                "summary": "Sign in",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["username", "password"],
                                "properties": {
                                    "username": {"type": "string"},
                                    "password": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    **_ok(
                        "a bearer token",
                        {
                            "type": "object",
                            "properties": {
                                "access_token": {"type": "string"},
                                "token_type": {"const": "bearer"},
                                "expires_in": {"type": "integer"},
                            },
                        },
                    ),
                    **_errors(400, 401, 429, 503),
                },
            }
        },
        "/api/auth/logout": {
            "post": {
                "summary": "Sign out (revokes the token)",
                "security": _BEARER,
                "responses": {**_ok("signed out", {"type": "object"}), **_errors(401)},
            }
        },
        "/api/auth/me": {
            "get": {
                "summary": "The signed-in admin",
                "security": _BEARER,
                "responses": {**_ok("the admin", {"type": "object"}), **_errors(401)},
            }
        },
        "/api/conversations": {
            "get": {
                "summary": "Conversations, newest activity first",
                "security": _BEARER,
                "parameters": [
                    _query("platform", "string", "telegram, slack or webhook"),
                    _query("q", "string", "full-text search over messages"),
                    *_PAGING,
                ],
                "responses": {
                    **_ok("a page of conversations", _page("Conversation")),
                    **_errors(400, 401, 503),
                },
            }
        },
        "/api/conversations/{id}/messages": {
            "get": {
                "summary": "A conversation's transcript, oldest first",
                "security": _BEARER,
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}},
                    *_PAGING,
                ],
                "responses": {
                    **_ok("a page of messages", _page("Message")),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/api/users": {
            "get": {
                "summary": "Users with their message counts, newest first",
                "security": _BEARER,
                "parameters": [
                    _query("platform", "string", "filter by platform"),
                    _query("q", "string", "part of a name or platform id"),
                    *_PAGING,
                ],
                "responses": {**_ok("a page of users", _page("User")), **_errors(400, 401, 503)},
            }
        },
        "/api/users/{id}": {
            "patch": {
                "summary": "Ban or unban a user, or set their own rate limit",
                "security": _BEARER,
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "minProperties": 1,
                                "additionalProperties": False,
                                "properties": {
                                    "banned": {"type": "boolean"},
                                    "rate_limit": {
                                        "type": ["string", "null"],
                                        "description": "RATE_LIMIT syntax, e.g. 10/minute;100/day;"
                                        " null for the service's default",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    **_ok("the user as stored now", {"$ref": "#/components/schemas/User"}),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/api/health": {
            "get": {
                "summary": "Database, Redis, model, adapters and queue, for the overview",
                "security": _BEARER,
                "responses": {
                    **_ok("the health", {"$ref": "#/components/schemas/Health"}),
                    **_errors(401),
                },
            }
        },
        "/api/stats": {
            "get": {
                "summary": "Messages, tokens, latency and outcomes per day",
                "security": _BEARER,
                "parameters": [
                    _query("days", "integer", "days back, today included (1-366, default 14)")
                ],
                "responses": {
                    **_ok("the statistics", {"$ref": "#/components/schemas/Stats"}),
                    **_errors(400, 401, 503),
                },
            }
        },
        "/api/openapi.json": {
            "get": {"summary": "This document", "responses": _ok("OpenAPI 3.1", {"type": "object"})}
        },
    },
}
