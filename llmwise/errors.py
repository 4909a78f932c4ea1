"""One error hierarchy for services and one error envelope for every API response.

Services raise :class:`ApplicationError` subclasses; views turn them into flash messages and the
API turns them (and DRF's own exceptions) into the OpenAI-shaped envelope::

    {"error": {"message", "type", "code", "param", "provider", "request_id"}}
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response


class ApplicationError(Exception):
    """A business rule said no. ``message`` is safe to show to the user."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    error_type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param


class Unauthenticated(ApplicationError):
    status_code: int = status.HTTP_401_UNAUTHORIZED
    error_type = "authentication_error"
    code = "invalid_api_key"


class NotPermitted(ApplicationError):
    status_code: int = status.HTTP_403_FORBIDDEN
    error_type = "permission_error"
    code = "forbidden"


class NotFound(ApplicationError):
    status_code: int = status.HTTP_404_NOT_FOUND
    error_type = "not_found_error"
    code = "not_found"


class Conflict(ApplicationError):
    status_code: int = status.HTTP_409_CONFLICT
    error_type = "conflict_error"
    code = "conflict"


class ServiceUnavailable(ApplicationError):
    """We cannot serve the request right now (the database went away): 503, retry shortly.

    Nothing half-done is left behind: a call's hold taken before the failure is freed by the
    reservation sweeper, and a call that answered 503 is not charged (its settle never
    committed).
    """

    status_code: int = status.HTTP_503_SERVICE_UNAVAILABLE
    error_type = "api_error"
    code = "service_unavailable"
    retry_after: float = 1.0


# What the database layer raises when the server is unreachable, restarting, or gave up on a
# statement (connection refused/closed, pool timeout, admin shutdown, lock or statement timeout).
# Django's wrappers, and psycopg's own from the hot path's async connections (llmwise/adb.py).
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def service_unavailable(exc: BaseException) -> ServiceUnavailable:
    """The envelope-ready error for an infrastructure failure (details stay in the logs)."""
    return ServiceUnavailable(
        "The service is briefly unavailable: its database did not answer. Retry in a moment."
    )


# What a stream that already started ends with as an error event in our envelope: a business
# error, or the database failing as the call settles.
ENVELOPE_ERRORS: tuple[type[Exception], ...] = (ApplicationError, *DATABASE_UNAVAILABLE)


def as_application_error(exc: Exception) -> ApplicationError:
    """``exc`` (one of :data:`ENVELOPE_ERRORS`) as the error to put in the envelope."""
    return exc if isinstance(exc, ApplicationError) else service_unavailable(exc)


def error_body(
    *,
    message: str,
    error_type: str,
    code: str,
    param: str | None = None,
    provider: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": error_type,
            "code": code,
            "param": param,
            "provider": provider,
            "request_id": request_id or new_request_id(),
        }
    }


def application_error_response(exc: ApplicationError, *, request_id: str) -> JsonResponse:
    """The envelope for a service error, outside DRF (the async gateway views)."""
    body = error_body(
        message=exc.message,
        error_type=exc.error_type,
        code=exc.code,
        param=exc.param,
        provider=getattr(exc, "provider", None),
        request_id=request_id,
    )
    response = JsonResponse(body, status=exc.status_code)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response["Retry-After"] = str(max(int(retry_after + 0.999), 1))
    if exc.status_code == status.HTTP_401_UNAUTHORIZED:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def _first_validation_message(detail: Any, path: str = "") -> tuple[str, str | None]:
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if not path else f"{path}.{key}"
            message, param = _first_validation_message(value, name)
            return message, param or name
    if isinstance(detail, list) and detail:
        return _first_validation_message(detail[0], path)
    return str(detail), path or None


_DRF_TYPES: dict[type[Exception], tuple[str, str]] = {
    drf_exceptions.NotAuthenticated: ("authentication_error", "invalid_api_key"),
    drf_exceptions.AuthenticationFailed: ("authentication_error", "invalid_api_key"),
    drf_exceptions.PermissionDenied: ("permission_error", "forbidden"),
    drf_exceptions.NotFound: ("not_found_error", "not_found"),
    drf_exceptions.MethodNotAllowed: ("invalid_request_error", "method_not_allowed"),
    drf_exceptions.UnsupportedMediaType: ("invalid_request_error", "unsupported_media_type"),
    drf_exceptions.ParseError: ("invalid_request_error", "invalid_json"),
    drf_exceptions.Throttled: ("rate_limit_error", "rate_limited"),
    drf_exceptions.ValidationError: ("invalid_request_error", "invalid_request"),
}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler producing the one envelope."""
    request = context.get("request")
    request_id = getattr(request, "request_id", None) if request is not None else None
    if isinstance(exc, ApplicationError):
        body = error_body(
            message=exc.message,
            error_type=exc.error_type,
            code=exc.code,
            param=exc.param,
            request_id=request_id,
        )
        return Response(body, status=exc.status_code)
    if isinstance(exc, DATABASE_UNAVAILABLE):
        unavailable = service_unavailable(exc)
        body = error_body(
            message=unavailable.message,
            error_type=unavailable.error_type,
            code=unavailable.code,
            request_id=request_id,
        )
        response = Response(body, status=unavailable.status_code)
        response["Retry-After"] = "1"
        return response
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    if not isinstance(exc, drf_exceptions.APIException):
        return None  # a real bug: let Django's 500 handling log it
    error_type, code = next(
        (types for cls, types in _DRF_TYPES.items() if isinstance(exc, cls)),
        ("api_error", "error"),
    )
    param = None
    if isinstance(exc, drf_exceptions.ValidationError):
        message, param = _first_validation_message(exc.detail)
    else:
        message = str(exc.detail)
    body = error_body(
        message=message, error_type=error_type, code=code, param=param, request_id=request_id
    )
    response = Response(body, status=exc.status_code)
    wait = getattr(exc, "wait", None)
    if isinstance(exc, drf_exceptions.Throttled) and wait is not None:
        response["Retry-After"] = str(int(wait) + 1)
    return response
