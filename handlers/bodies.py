"""Reading request bodies: JSON into pydantic models, with CONTRACT.md's errors (400, 422)."""
from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from app.errors import InvalidField, Malformed

M = TypeVar("M", bound=BaseModel)


async def parse(request: web.Request, model: type[M]) -> M:
    """The body as `model`: 400 malformed when not a JSON object, 422 naming the field when invalid."""
    raw = await request.read()
    if not raw.strip():
        data = {}
    else:
        try:
            data = orjson.loads(raw)
        except (ValueError, UnicodeDecodeError):  # orjson.JSONDecodeError is a ValueError
            raise Malformed("body is not valid JSON", code="malformed_json") from None
    if not isinstance(data, dict):
        raise Malformed("body must be a JSON object", code="malformed_json")
    return model.model_validate(data)


def json_response(data: Any, *, status: int = 200, headers: dict | None = None) -> web.Response:
    """`web.json_response` through orjson (UTF-8, dates as ISO 8601): microseconds, not tens."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidField(name, "must be an integer") from None
    if not low <= value <= high:
        raise InvalidField(name, f"must be between {low} and {high}")
    return value
