"""Domain errors. One middleware maps them to CONTRACT.md's envelope; the OA router to a text reply."""
from __future__ import annotations

import asyncpg
from redis import exceptions as redis_errors
from tortoise.exceptions import DBConnectionError, IntegrityError


class DomainError(Exception):
    """A rule said no. `code` is the snake_case code of the error envelope."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.headers = headers or {}


class Malformed(DomainError):
    status, code = 400, "malformed"


class Unauthenticated(DomainError):
    status, code = 401, "unauthenticated"


class Forbidden(DomainError):
    status, code = 403, "forbidden"


class NotFound(DomainError):
    status, code = 404, "not_found"


class Conflict(DomainError):
    status, code = 409, "conflict"


class InvalidField(DomainError):
    status, code = 422, "invalid_field"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RateLimited(DomainError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, int(retry_after)))})
        self.retry_after = retry_after


class Unavailable(DomainError):
    status, code = 503, "unavailable"


class InsufficientPoints(Conflict):
    code = "insufficient_points"


def dependency_failed(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is PostgreSQL or Redis being unreachable, dropping the
    connection, restarting or too slow: a 503 worth retrying, not a bug. Integrity errors and
    bad SQL are not."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, IntegrityError):
            return False
        if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError,
                            redis_errors.RedisClusterException, redis_errors.ClusterDownError,
                            DBConnectionError, TimeoutError, OSError,
                            asyncpg.PostgresConnectionError, asyncpg.QueryCanceledError,
                            asyncpg.AdminShutdownError, asyncpg.CannotConnectNowError,
                            asyncpg.TooManyConnectionsError, asyncpg.ConnectionDoesNotExistError)):
            return True
        if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
            return True  # "connection is closed", "pool is closed": the link went away
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        exc, seen = nxt, seen + 1
    return False
