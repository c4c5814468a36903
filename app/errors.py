"""Domain errors. One middleware maps them to CONTRACT.md's envelope; the OA router to a text reply."""
from __future__ import annotations


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
