"""The FastAPI application shell shared by every process.

``create_app`` gives each process the same health, metrics, JWKS, Problem
JSON errors, request body limit and W3C trace context handling, so services
only add their own routes and background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from fastapi import routing as fastapi_routing
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel.api import Problem
from kernel.auth import TokenVerifier, current_caller, development_jwks
from kernel.errors import (
    PROBLEM_CONTENT_TYPE,
    install_problem_handlers,
    problem_response,
    soap_fault,
)
from kernel.metrics import BACKGROUND_JOB_RESTARTS, HTTP_REQUESTS
from kernel.settings import HubSettings
from kernel.telemetry import continue_trace

log = logging.getLogger(__name__)

#: Background work of a process: coroutines started after start-up, cancelled at shutdown.
BackgroundTask = Callable[[], Coroutine[Any, Any, None]]

#: Reads, before each scrape of ``/metrics``, a gauge kept elsewhere (the outbox's backlog
#: in the database): read at scrape time, it costs nothing between scrapes.
ScrapeRefresh = Callable[[], Awaitable[None]]


#: How long a scrape waits for each of its refreshes.
SCRAPE_REFRESH_SECONDS = 2.0


def refresh_at_scrape(app: FastAPI, refresh: ScrapeRefresh) -> None:
    """Run ``refresh`` before each scrape of the process's ``/metrics``."""
    app.state.scrape_refreshes.append(refresh)


#: A check of something the process needs (its database, the broker): raises if it is away.
HealthCheck = Callable[[], Awaitable[None]]
#: How long ``/healthz`` waits for each check.
HEALTH_CHECK_SECONDS = 2.0


def check_health_of(app: FastAPI, name: str, check: HealthCheck) -> None:
    """Make ``/healthz`` answer 503, naming ``name``, while ``check`` fails."""
    app.state.health_checks[name] = check


def database_check(sessions: async_sessionmaker[AsyncSession]) -> HealthCheck:
    async def check() -> None:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))

    return check


#: A Kafka ApiVersions request (API key 18, version 0, no body), correlation id 1, client
#: id "hub-healthz": the first request every Kafka client makes, so every broker answers it.
_CLIENT_ID = b"hub-healthz"
_API_VERSIONS = struct.pack(">hhih", 18, 0, 1, len(_CLIENT_ID)) + _CLIENT_ID
_API_VERSIONS_REQUEST = struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS


def broker_check(bootstrap_servers: str) -> HealthCheck:
    """One of the bootstrap servers answers a Kafka request: the consumers and the relay
    only log that they cannot reach the broker, and wait; an operator must see it. A
    connection alone is not enough: a broker that hangs (frozen, its disk full) still
    accepts one, from the system's backlog, while nothing moves."""

    servers = [server.strip() for server in bootstrap_servers.split(",") if server.strip()]

    async def ask(server: str) -> None:
        host, _, port = server.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        try:
            writer.write(_API_VERSIONS_REQUEST)
            await writer.drain()
            _size, correlation_id = struct.unpack(">ii", await reader.readexactly(8))
            if correlation_id != 1:
                raise ConnectionError(f"{server} answered another request ({correlation_id})")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def check() -> None:
        # All at once, the first to accept will do: one after another, a node that drops
        # packets (down for maintenance) used up the check's time before the others.
        attempts = [asyncio.ensure_future(ask(server)) for server in servers]
        errors = []
        try:
            for attempt in asyncio.as_completed(attempts):
                try:
                    await attempt
                    return
                except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                    errors.append(f"{exc}")
            raise ConnectionError(f"{', '.join(servers)}: " + "; ".join(errors))
        finally:
            for attempt in attempts:
                attempt.cancel()
            # Read every outcome, so that none is reported "never retrieved".
            await asyncio.gather(*attempts, return_exceptions=True)

    return check


#: A background job that stopped on an error starts again after this many seconds, doubled
#: at each failure in a row up to ``LONGEST_RESTART_DELAY``.
FIRST_RESTART_DELAY, LONGEST_RESTART_DELAY = 1.0, 60.0


class JobCancelled(Exception):
    """A job ended with a cancellation that nobody asked for (a library's, inside it)."""


class BackgroundJobs:
    """Runs a process's background jobs, and starts again any that stops on an error.

    A job is a consumer, an outbox relay or a poller: each handles the errors
    it expects (a database away, a failing delivery) and goes on. One that
    escapes (a broker unreachable when a consumer joins its group, a bug)
    used to end the job, while the process kept answering ``/healthz`` with
    ``ok`` and consumed nothing more. Now the job starts again after a delay
    that grows while it keeps failing (a job that ran for longer than the
    longest delay starts from the first one again), each restart is counted
    (``hub_background_job_restarts_total``), and ``/healthz`` answers 503
    with the job and its kind of error until the job is running again.
    """

    def __init__(self, component: str) -> None:
        self._component = component
        self._tasks: list[asyncio.Task[None]] = []
        #: The jobs waiting to start again, with the kind of error that stopped them.
        self.restarting: dict[str, str] = {}

    def start(self, jobs: list[BackgroundTask]) -> None:
        names = [f"{self._component}:{job.__name__}" for job in jobs]
        # A job's name keys its restart counter and its entry in ``restarting``: two jobs of
        # one name would count as one, and the second to start again would find the
        # entry gone and stop for good.
        if len(set(names)) < len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"two background jobs of one name: {', '.join(twice)}")
        for name, job in zip(names, jobs, strict=True):
            self._tasks.append(asyncio.create_task(self._supervise(name, job), name=name))

    async def _supervise(self, name: str, job: BackgroundTask) -> None:
        delay = FIRST_RESTART_DELAY
        while True:
            started = time.monotonic()
            try:
                try:
                    await job()
                    return  # a job that has nothing to do (e.g. no routes) ends on purpose
                except asyncio.CancelledError as cancelled:
                    current = asyncio.current_task()
                    if current is None or current.cancelling():
                        raise  # stop() asked
                    # Raised by a library inside the job, not asked for: a failure like others.
                    raise JobCancelled("the job was cancelled from within") from cancelled
            except Exception as exc:
                if time.monotonic() - started > LONGEST_RESTART_DELAY:
                    delay = FIRST_RESTART_DELAY
                log.exception("background job %s stopped; starting it again in %g s", name, delay)
                BACKGROUND_JOB_RESTARTS.labels(self._component, name).inc()
                # Only the error's kind: /healthz is open, and an error's text may quote
                # a document (the log has the whole of it).
                self.restarting[name] = type(exc).__name__
                await asyncio.sleep(delay)
                delay = min(delay * 2, LONGEST_RESTART_DELAY)
                del self.restarting[name]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()


class BodyTooLarge(Exception):
    pass


class RequestGuardMiddleware:
    """Refuse, before any route sees them, a URL holding a control character and a body
    over the limit (by its Content-Length, or while it streams in).

    The refusal is a Problem, or a SOAP 1.1 Fault for a SOAP call (one that names its
    ``SOAPAction``, as SOAP 1.1 over HTTP must): a SOAP client reads a Problem as a
    transport error, not as the service's answer."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _has_control_character(scope):
            # A NUL in a path or a query parameter reached PostgreSQL, which refuses it in
            # a text: a 500 for a mistyped URL (SQLite stored it).
            await _refusal(
                scope,
                400,
                "control-character",
                "Control character in the URL",
                "The URL holds a control character (such as NUL), which no identifier"
                " or search of this API can contain.",
            )(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _refusal(
                scope,
                400,
                "bad-content-length",
                "Invalid Content-Length",
                f"The Content-Length header {declared.decode('latin-1')[:40]!r} is not a"
                " number of bytes.",
            )(scope, receive, send)
            return
        if declared is not None and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen, exceeded, answered = 0, False, False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                exceeded = True
                raise BodyTooLarge
            return message

        async def send_unless_exceeded(message: Message) -> None:
            nonlocal answered
            # FastAPI catches what the body's reading raised and answers 400 "error parsing
            # the body": that answer is dropped, and the 413 below sent instead.
            if exceeded and not answered:
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, limited_receive, send_unless_exceeded)
        if exceeded and not answered:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _refusal(
            scope,
            413,
            "body-too-large",
            "Request body too large",
            f"This API accepts bodies of at most {self.max_bytes} bytes (the hub's"
            " HUB_MAX_BODY_BYTES).",
        )
        await response(scope, receive, send)


def _refusal(scope: Scope, status: int, slug: str, title: str, detail: str) -> Response:
    """A Problem, or the same as a SOAP 1.1 Client Fault for a SOAP call."""
    if any(name == b"soapaction" for name, _ in scope.get("headers", [])):
        return soap_fault("Client", f"{title}: {detail}", slug, status)
    return problem_response(status, slug, title, detail, scope.get("path"))


#: A C0 control character or DEL: in a decoded path, and in a query string, raw or as a
#: percent-escape.
_CONTROL_IN_PATH = re.compile("[\x00-\x1f\x7f]")
_CONTROL_IN_QUERY = re.compile(rb"[\x00-\x1f\x7f]|%[01][0-9a-fA-F]|%7[fF]")


def _has_control_character(scope: Scope) -> bool:
    return bool(
        _CONTROL_IN_PATH.search(scope.get("path", ""))
        or _CONTROL_IN_QUERY.search(scope.get("query_string", b""))
    )


class TraceAndCountMiddleware:
    """A server span per request, child of the caller's W3C trace context, and a request count.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's
    BaseHTTPMiddleware runs each request in an extra task and costs about a
    millisecond of CPU per request, which the hot APIs cannot spare.
    """

    def __init__(self, app: ASGIApp, component: str) -> None:
        self.app = app
        self.component = component
        self.tracer = trace.get_tracer(component)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        method = scope["method"]
        with (
            continue_trace(headers),
            self.tracer.start_as_current_span(method, kind=SpanKind.SERVER) as span,
        ):
            try:
                await self.app(scope, receive, send_and_note_status)
            finally:
                HTTP_REQUESTS.labels(self.component, method, str(status)).inc()
                # Named by the route's template (Starlette notes the route it matched), not
                # the path: a document's id in each span name made every request a name of
                # its own in a tracing backend. A request no route matched keeps the method.
                template = getattr(scope.get("route"), "path", None)
                if template:
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)


#: The methods of an OpenAPI Path Item (its other keys are summaries and parameters).
_OPERATIONS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_SCHEMAS = "#/components/schemas/"
#: FastAPI's own description of a validation error, which this hub never answers.
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
#: The bearer scheme of the routes that need a token and name none (the services name
#: theirs, ``HTTPBearer``, to describe their scopes).
_BEARER = "HTTPBearer"
#: The Problems any route may answer, whatever it declares (``kernel.errors``): a
#: route's own declaration of one of these statuses is kept.
_MALFORMED = (
    "`control-character`: the URL holds a control character; `bad-content-length`: the"
    " Content-Length is not a number"
)
_COMMON_PROBLEMS: dict[str, str] = {
    "400": f"Malformed request ({_MALFORMED})",
    "400 json": f"Malformed request ({_MALFORMED}; `malformed-json`: the body is not JSON)",
    "401": "Missing or invalid bearer token (`unauthorized`)",
    "403": "The token lacks the scope, or its tenant is not configured (`forbidden`,"
    " `unknown-tenant`)",
    "413": "The body is larger than the API accepts (`body-too-large`)",
    "415": "The body is not JSON (`unsupported-media-type`)",
    "422": "The request does not match the API contract (`invalid-request`: `errors` names"
    " each field and what is wrong with it)",
    "500": "The hub could not complete the request (`internal-error`); operators have the"
    " details in the logs",
    "503": "The keys to check the token could not be fetched"
    " (`identity-provider-unavailable`): try again later",
}


def _problem_schemas() -> dict[str, dict[str, Any]]:
    """``Problem`` (RFC 9457, ``kernel.api.Problem``) and ``ValidationProblem``, the same
    with the ``errors`` a 400 or 422 about the request's fields lists."""
    problem = Problem.model_json_schema()
    validation = json.loads(json.dumps(problem))
    validation["title"] = "ValidationProblem"
    validation["description"] = (
        "A Problem about the request itself; `errors` lists each field that breaks the"
        " API contract (`body.recipient.identifier`, `query.limit`, …)."
    )
    validation["properties"]["errors"] = {
        "type": "array",
        "title": "Errors",
        "items": {
            "type": "object",
            "properties": {
                "field": {"type": "string", "title": "Field"},
                "message": {"type": "string", "title": "Message"},
            },
            "required": ["field", "message"],
        },
    }
    return {"Problem": problem, "ValidationProblem": validation}


def _problem_schema(status: str) -> dict[str, str]:
    name = "ValidationProblem" if status in ("400", "422") else "Problem"
    return {"$ref": _SCHEMAS + name}


def _problem_response(status: str, description: str | None = None) -> dict[str, Any]:
    return {
        "description": description or _COMMON_PROBLEMS[status],
        "content": {PROBLEM_CONTENT_TYPE: {"schema": _problem_schema(status)}},
    }


def _needs_a_token(dependant: Dependant) -> bool:
    return dependant.call is current_caller or any(
        _needs_a_token(dependency) for dependency in dependant.dependencies
    )


def _routes_needing_a_token(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of the routes of ``app`` that depend on ``current_caller``. FastAPI
    0.16x keeps an included router as one route, whose routes (with the router's
    dependencies) ``iter_route_contexts`` lists; earlier releases copied them into
    ``app.routes``."""
    iterate = getattr(fastapi_routing, "iter_route_contexts", None)
    routes: Iterable[Any] = iterate(app.routes) if iterate is not None else app.routes
    return {
        (route.path_format, method.lower())
        for route in routes
        if isinstance(getattr(route, "original_route", route), APIRoute)
        and _needs_a_token(route.dependant)
        for method in route.methods or ()
    }


def _status_order(status: str) -> tuple[int, str]:
    return (int(status), "") if status.isdigit() else (1000, status)


def _honest_errors(document: dict[str, Any], authenticated: set[tuple[str, str]]) -> None:
    """Rewrite ``document``'s error responses as the hub answers them (see
    ``document_problems_in_openapi``); ``authenticated``: (path, method) of the routes
    that need a bearer token."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(_problem_schemas())
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _OPERATIONS:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status, response in responses.items():
                content = response.get("content", {})
                if status == "422" and _FASTAPI_VALIDATION[0] in json.dumps(content):
                    responses[status] = _problem_response("422")
                    continue
                problem = content.get(PROBLEM_CONTENT_TYPE)
                # A route's own Problem (``kernel.api.problem_responses``), inlined at each
                # route: one reference instead, keeping the route's description.
                if problem and problem.get("schema", {}).get("title") == "Problem":
                    problem["schema"] = _problem_schema(status)
            common = ["400", "500"]
            if (path, method) in authenticated:
                common += ["401", "403", "503"]
                if not operation.get("security"):
                    operation["security"] = [{_BEARER: []}]
                    components.setdefault("securitySchemes", {}).setdefault(
                        _BEARER,
                        {
                            "type": "http",
                            "scheme": "bearer",
                            "description": "A JWT naming the tenant (claim `tenant`) and"
                            " the scopes (claim `scope`).",
                        },
                    )
            body = operation.get("requestBody", {}).get("content", {})
            json_body = any(t == "application/json" or t.endswith("+json") for t in body)
            if body:
                common += ["413", "415"] if json_body else ["413"]
            for status in common:
                said = _COMMON_PROBLEMS["400 json"] if status == "400" and json_body else None
                responses.setdefault(status, _problem_response(status, said))
            operation["responses"] = dict(
                sorted(responses.items(), key=lambda entry: _status_order(entry[0]))
            )
    if _SCHEMAS + _FASTAPI_VALIDATION[0] not in json.dumps(document):
        for name in _FASTAPI_VALIDATION:
            schemas.pop(name, None)


def document_problems_in_openapi(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI document say what the hub answers on errors.

    FastAPI documents a 422 as its ``HTTPValidationError`` (``{detail: [{loc, msg,
    type}]}``, ``application/json``), which the hub never answers: ``kernel.errors``
    answers every error as an RFC 9457 Problem (``application/problem+json``), a
    validation error as ``invalid-request`` with ``errors: [{field, message}]``. The
    document is generated once, at the first call of ``app.openapi`` (the first request
    of ``/openapi.json``, when every route is there), changed as follows and kept
    (``app.openapi_schema``, as FastAPI keeps its own). In each operation:

    - FastAPI's 422 becomes the ``ValidationProblem`` schema, and its components
      ``HTTPValidationError`` and ``ValidationError`` are dropped;
    - each Problem a route declares (inlined at each route) refers to the ``Problem``
      component, a 400 or 422 to ``ValidationProblem`` (a Problem with ``errors``);
    - the Problems any route may answer are declared, unless the route declares the
      status itself: 400 (``RequestGuardMiddleware``) and 500 everywhere; 401, 403 and
      503, and the bearer ``security`` if the route names none, where a token is needed
      (a route depending on ``kernel.auth.current_caller``); 413 where a body is taken,
      and 415 where it is JSON.

    ``contracts/openapi/`` holds each API's document (``contracts.openapi_documents``).
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            authenticated = _routes_needing_a_token(app)
            document = generate()
            _honest_errors(document, authenticated)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    component: str,
    settings: HubSettings,
    *,
    title: str,
    description: str,
    startup: Callable[[FastAPI], Awaitable[list[BackgroundTask]]] | None = None,
    shutdown: Callable[[FastAPI], Awaitable[None]] | None = None,
    version: str = "1.0.0",
    front: Callable[[ASGIApp], ASGIApp] | None = None,
    body_bytes: int = 0,
) -> FastAPI:
    """The process's application. ``front`` wraps the routes innermost (inside the
    span, count and body limit): a fast path that may answer before FastAPI routes.
    ``body_bytes``: the largest body the process's own requests need, when more than the
    hub's ``max_body_bytes``; the larger of the two is the limit
    (``app.state.max_body_bytes``)."""
    max_body_bytes = max(settings.max_body_bytes, body_bytes)

    jobs = BackgroundJobs(component)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.token_verifier = TokenVerifier(settings)
        # Each start registers its own (a test may run one app's lifespan twice): the last
        # run's would read a database engine disposed of at its end.
        app.state.scrape_refreshes = []
        app.state.health_checks = {}
        jobs.start(await startup(app) if startup else [])
        try:
            yield
        finally:
            await jobs.stop()
            if shutdown:
                await shutdown(app)

    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        # TraceAndCountMiddleware is the one server span per request. FastAPI's own
        # telemetry (0.16x) would add a second one and spans for each dependency and
        # for serialisation (0.06 ms of CPU per request on a minimal endpoint).
        # Older FastAPI releases keep this unknown setting unused.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    document_problems_in_openapi(app)
    app.state.settings = settings
    app.state.component = component
    app.state.max_body_bytes = max_body_bytes
    app.state.scrape_refreshes = []
    app.state.health_checks = {}
    install_problem_handlers(app)
    if front is not None:
        app.add_middleware(front)  # added first: the innermost
    app.add_middleware(RequestGuardMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(TraceAndCountMiddleware, component=component)

    #: What each failing check last logged: /healthz is asked every few seconds, and a
    #: failure is logged when it begins or changes.
    logged_failures: dict[str, str] = {}

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        checks: dict[str, HealthCheck] = app.state.health_checks
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(check(), HEALTH_CHECK_SECONDS) for check in checks.values()),
            return_exceptions=True,
        )
        unreachable: dict[str, str] = {}
        for name, outcome in zip(checks, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                logged_failures.pop(name, None)
                continue
            # Only the error's kind, as for the jobs: /healthz is open, and an error's text
            # names internal addresses ("Connect call failed ('10.0.3.7', 5432)").
            unreachable[name] = type(outcome).__name__
            said = f"{type(outcome).__name__}: {outcome}".rstrip(": ")
            if logged_failures.get(name) != said:
                logged_failures[name] = said
                log.warning("%s cannot reach its %s: %s", component, name, said)
        if jobs.restarting or unreachable:
            down: dict[str, Any] = {"status": "degraded", "component": component}
            if jobs.restarting:
                down["restarting"] = jobs.restarting
            if unreachable:
                down["unreachable"] = unreachable
            return JSONResponse(down, status_code=503)
        return JSONResponse({"status": "ok", "component": component})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        for refresh in app.state.scrape_refreshes:
            try:
                # Bounded: a database that does not answer (PostgreSQL's connect timeout is
                # long) must not hold the scrape, and every other metric, with it.
                await asyncio.wait_for(refresh(), SCRAPE_REFRESH_SECONDS)
            except Exception as exc:  # the database is away: the other metrics still answer
                log.warning("%s could not read a metric for this scrape: %r", component, exc)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    if settings.jwks_url is None:

        @app.get("/.well-known/jwks.json", include_in_schema=False)
        async def jwks() -> dict[str, Any]:
            return development_jwks(settings)

    return app
