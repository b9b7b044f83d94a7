"""The server's errors as the client sees them: `{"error": {"field", "message", "type"}}` with a 4xx or 5xx.

`ApiError` is what the server's own checks raise; `add_error_handlers(app)` turns it, a request that
fails the schema, and Starlette's own errors (404, 405) into that body.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from charnn.serve.schemas import LIMITS, UNSUPPORTED


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.field, self.message, self.kind = status, field, message, kind


def error_body(field: str | None, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """The error body, also sent as the last event of a stream whose generation failed."""
    return {"error": {"field": field, "message": message, "type": kind}}


def error_response(
    status: int, field: str | None, message: str, kind: str = "invalid_request_error", headers=None
) -> JSONResponse:
    return JSONResponse(error_body(field, message, kind), status_code=status, headers=headers)


def validation_error_response(error: RequestValidationError) -> JSONResponse:
    """A 422 that names the field at fault, and the server's limit or the unsupported value where one is."""
    errors = error.errors()
    first = errors[0]
    # A field with several types (stop: a string or a list) fails once per type; the error that
    # is not about the type is the one that says what is wrong.
    same_field = [e for e in errors if tuple(e.get("loc", ()))[:2] == tuple(first.get("loc", ()))[:2]]
    first = next((e for e in same_field if not e.get("type", "").endswith("_type")), first)
    loc = [str(part) for part in first.get("loc", ())]
    if loc[:1] == ["body"]:
        loc = loc[1:]
    field = loc[0] if loc else "body"
    kind = first.get("type", "")
    if kind == "missing" and not loc:
        message = "the request needs a JSON object body"
    elif kind == "json_invalid":
        field, message = "body", f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    elif kind == "extra_forbidden":
        message = f"unknown field {field!r}"
    else:
        message = f"{field}: {first.get('msg', 'invalid value')}"
        if kind.startswith(("value_error",)):
            message = f"{field} {first.get('msg', '').removeprefix('Value error, ')}"
    if field == "logit_bias" and kind == "string_pattern_mismatch" and loc[-1:] == ["[key]"]:
        # Keys are vocabulary indices: name every one the model lacks, as OpenAI names unknown token ids.
        keys = {str(e["loc"][-2]) for e in errors if e.get("type") == kind and e["loc"][-1] == "[key]"}
        unknown = sorted(keys, key=lambda k: (not k.isdecimal(), int(k) if k.isdecimal() else 0, k))
        message = (f"logit_bias names token ids this model does not have: {', '.join(unknown)} (GET /v1/model lists "
                   "its vocabulary; an id is a character's index in it)")  # fmt: skip
    if field in UNSUPPORTED:
        message = f"{field} is not supported by this server: {UNSUPPORTED[field]}"
    if field in LIMITS and kind in ("less_than_equal", "string_too_long"):
        message += f" (the server's {LIMITS[field]} limit)"
    return error_response(422, field, message)


def add_error_handlers(app: FastAPI) -> None:
    """Every error the app answers with, in the one error body."""

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        headers = {"Retry-After": "1"} if error.status == 429 else None
        return error_response(error.status, error.field, error.message, error.kind, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        return validation_error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        kind = "not_found" if error.status_code == 404 else "http"
        return error_response(error.status_code, None, str(error.detail), kind, getattr(error, "headers", None))
