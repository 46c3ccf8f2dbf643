"""RFC 9457 Problem JSON for every REST API of the hub, and SOAP 1.1 Faults for its SOAP
endpoints.

Domain code raises ``ProblemError`` (or a subclass) with a stable type slug, a
title and a detail written for the person who will read it; the handlers
installed by ``install_problem_handlers`` turn it, FastAPI's validation
errors and anything unexpected into ``application/problem+json``. A SOAP
endpoint answers with ``soap_fault`` instead, whose detail names the same
problem type.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from lxml import etree
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kernel.logs import mask_national_numbers
from kernel.texts import plain_text

PROBLEM_CONTENT_TYPE = "application/problem+json"
#: A problem type is ``PROBLEM_BASE`` + its slug, its identity to every client: changing the
#: base breaks them all. docs/problems.md lists each type, and says why this base stays.
PROBLEM_BASE = "https://hub.example/problems/"
log = logging.getLogger(__name__)


def failure_text(error: BaseException) -> str:
    """What went wrong, for an API caller or a kept record: the exception's type and text,
    of a database error its driver's first line only. SQLAlchemy's text quotes the
    statement (the schema is no caller's business); national numbers are masked."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        # PostgreSQL's next lines detail the row: "Key (niss)=(...) already exists".
        said = f"{type(error.orig).__name__}: {str(error.orig).partition(chr(10))[0]}"
    else:
        said = f"{type(error).__name__}: {error}"
    return plain_text(mask_national_numbers(said))


class ProblemError(Exception):
    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.extensions = extensions


class NotFound(ProblemError):
    def __init__(self, what: str, identifier: str) -> None:
        super().__init__(404, "not-found", f"{what} not found", f"No {what} {identifier!r} here.")


class Conflict(ProblemError):
    def __init__(self, slug: str, detail: str, **extensions: Any) -> None:
        super().__init__(409, slug, "Conflict with the document's state", detail, **extensions)


def problem_response(
    status: int, slug: str, title: str, detail: str, instance: str | None = None, **extensions: Any
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)


SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_MEDIA_TYPE = "text/xml; charset=utf-8"


def soap_fault(
    code: str, message: str, slug: str, status: int = 500, headers: dict[str, str] | None = None
) -> Response:
    """A SOAP 1.1 Fault (``code``: Client or Server); its detail names the hub's problem
    type, as REST's Problem JSON does."""
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV})
    fault = etree.SubElement(
        etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body"), f"{{{SOAP_ENV}}}Fault"
    )
    etree.SubElement(fault, "faultcode").text = f"soapenv:{code}"
    etree.SubElement(fault, "faultstring").text = message
    etree.SubElement(etree.SubElement(fault, "detail"), "problemType").text = PROBLEM_BASE + slug
    content = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return Response(content, status_code=status, media_type=SOAP_MEDIA_TYPE, headers=headers)


def _field_path(location: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in location if part != "body") or "body"


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status, exc.slug, exc.title, exc.detail, request.url.path, **exc.extensions
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field_path(error.get("loc", ())), "message": error.get("msg", "")}
            for error in exc.errors()
        ]
        malformed = any(error.get("type") == "json_invalid" for error in exc.errors())
        if malformed:
            return problem_response(
                400,
                "malformed-json",
                "Malformed JSON",
                "The request body is not valid JSON.",
                request.url.path,
                errors=errors,
            )
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        whole_body = any(tuple(error.get("loc", ())) == ("body",) for error in exc.errors())
        if whole_body and media_type != "application/json" and not media_type.endswith("+json"):
            # A JSON route sent text or XML: FastAPI did not read the body as JSON, and said
            # only that the body "should be a valid dictionary".
            return problem_response(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                f"This route takes application/json, not {media_type or 'an untyped body'}.",
                request.url.path,
            )
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(
            422,
            "invalid-request",
            "The request does not match the API contract",
            summary,
            request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}.get(
            exc.status_code, "http-error"
        )
        response = problem_response(
            exc.status_code, slug, str(exc.detail), str(exc.detail), request.url.path
        )
        if exc.headers:  # a 405's Allow (RFC 9110 §15.5.6), say
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return internal_error(request.url.path)


def internal_error(instance: str | None) -> JSONResponse:
    """The answer to a request that failed unexpectedly."""
    # Not "nothing was stored": a route may fail after its transaction committed.
    return problem_response(
        500,
        "internal-error",
        "Internal error",
        "The hub could not complete this request. Look the document up before sending it"
        " again, unless the request carried an Idempotency-Key. Operators have the details"
        " in the logs.",
        instance,
    )
