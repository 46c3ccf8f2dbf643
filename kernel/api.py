"""What every service's REST API shares: who may call, one transaction per change, paging, Problems.

A route declares its caller with ``Annotated[Caller, Depends(authorised(SCOPE))]``:
the token is checked (``kernel.auth``), its tenant must be configured, and it
must carry the scope. ``StorageDep`` gives the route the service's sessions and
``unit_of_work`` (the document change and its outbox events commit together).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Generic, Protocol, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EnvelopeError
from kernel.auth import Caller, CallerDep
from kernel.consumer import NotHandledHere, RejectedEvent
from kernel.database import listing_page
from kernel.errors import NotFound, ProblemError, failure_text
from kernel.idempotency import claiming_key
from kernel.outbox import OutboxRelay, transaction
from kernel.tenants import Tenant, UnknownTenant
from kernel.texts import NOT_IN_TEXT

T = TypeVar("T")


def authorised(scope: str) -> Callable[[Request, Caller], Awaitable[Caller]]:
    """A dependency: the caller of a configured tenant holding ``scope``."""

    async def dependency(request: Request, caller: CallerDep) -> Caller:
        tenants: dict[str, Tenant] = request.app.state.tenants
        if caller.tenant not in tenants:
            raise UnknownTenant(caller.tenant)
        caller.require(scope)
        return caller

    return dependency


@dataclass(frozen=True)
class Storage:
    sessions: async_sessionmaker[AsyncSession]
    relay: OutboxRelay | None
    tenants: dict[str, Tenant]

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction: the document change and its events commit together (and the
        request's Idempotency-Key, if it has one: ``kernel.idempotency``)."""
        async with claiming_key(transaction(self.sessions, self.relay)) as session:
            yield session

    @asynccontextmanager
    async def beside_the_request(self) -> AsyncIterator[AsyncSession]:
        """A transaction that does not take the request's Idempotency-Key: for what a
        refused request leaves behind (a replay's failure noted on its kept event). A
        refused request keeps no key, so that it may be sent again, corrected."""
        async with transaction(self.sessions, self.relay) as session:
            yield session


async def storage(request: Request) -> Storage:
    state = request.app.state
    return Storage(state.sessions, state.relay, state.tenants)


StorageDep = Annotated[Storage, Depends(storage)]


#: The calendar a request's days and instants must fall in. At its ends the deadline
#: arithmetic overflowed (a file received on 9999-12-31) and so did an instant's
#: conversion to UTC (0001-01-01T00:00:00+01:00): 500s, for a typing mistake.
EARLIEST_DAY, LATEST_DAY = date(1900, 1, 1), date(2199, 12, 31)


#: The database's largest integer: an offset or a row id past it was a 500 (it could not
#: be bound to the statement) where it can only mean "nothing there".
LARGEST_INTEGER = 2**63 - 1
#: How many rows a listing skips (``?offset=``).
Offset = Annotated[int, Query(ge=0, le=LARGEST_INTEGER)]


class RequestModel(BaseModel):
    """A request's body: unknown fields refused, and so are, in every field (within lists
    and mappings too), texts holding a control character and days out of the calendar."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        _check_plain(value)
        return value


#: A media type as RFC 6838 names one: type/subtype, without parameters. Stored as said,
#: one with a line break ("text/html\r\nX-Evil: 1") made its download fail for good.
MEDIA_TYPE_PATTERN = (
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}$"
)


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be a text of this API (it holds a control character), or None."""
    if found := NOT_IN_TEXT.search(value):
        return (
            f"holds the control character U+{ord(found.group()):04X}, which no text of"
            " this API may contain"
        )
    return None


def _check_plain(value: Any) -> None:
    if isinstance(value, str):
        if problem := text_problem(value):
            raise ValueError(problem)
    elif isinstance(value, date):  # a datetime too
        day = value.date() if isinstance(value, datetime) else value
        if not EARLIEST_DAY <= day <= LATEST_DAY:
            raise ValueError(
                f"{value.isoformat()} is out of the calendar this API accepts"
                f" ({EARLIEST_DAY.isoformat()} to {LATEST_DAY.isoformat()})"
            )
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _check_plain(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key)
            _check_plain(item)
    elif isinstance(value, BaseModel):
        # A request's part that is a model of its own (a contract's, say: a decision's
        # concerned party), whose texts were not checked with the request's.
        for name in type(value).model_fields:
            _check_plain(getattr(value, name))


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="How many documents match the filters in all")
    limit: int
    offset: int


class Problem(BaseModel):
    """RFC 9457 Problem Details; ``type`` ends in a stable slug (``…/problems/not-a-pdf``)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


_PROBLEM_SCHEMA = Problem.model_json_schema()
_PROBLEM_DESCRIPTIONS = {
    400: "Malformed request body",
    401: "Missing or invalid bearer token",
    403: "Token lacks the scope, or its tenant is not configured",
    404: "No such document for the caller's tenant",
    409: "The document's state forbids the operation",
    413: "Body or attached document too large",
    415: "Unsupported media type",
    422: "The request breaks the API contract or a business rule",
    503: "A dependency of this operation is unavailable",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the Problem JSON answers of a route."""
    return {
        status: {
            "description": _PROBLEM_DESCRIPTIONS[status],
            "content": {"application/problem+json": {"schema": _PROBLEM_SCHEMA}},
        }
        for status in (401, 403, *statuses)
    }


def download_responses(*problems: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI of a route that answers a stored document's bytes (see ``download``)."""
    ok = {"description": "The document's bytes", "content": {"*/*": {}}}
    return {200: ok, **problem_responses(*problems)}


def download(content: bytes, media_type: str, filename: str) -> Response:
    """A stored document's bytes, which a browser saves under the document's own name.

    ``filename*`` (RFC 6266 with RFC 8187 encoding) carries accents and spaces
    of names like ``Décision n°12.pdf`` safely.
    """
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
        # A browser saves it as the type said, never runs it as another (HTML, a script).
        "X-Content-Type-Options": "nosniff",
    }
    return Response(content, media_type=media_type, headers=headers)


class RejectedEventView(BaseModel):
    id: int
    event_id: str | None
    event_type: str
    topic: str
    reason: str = Field(
        description="Why it was kept: how it breaks its contract, or the error its handler "
        "kept failing with"
    )
    received_at: datetime
    data: str = Field(description="The event's body as received (UTF-8, invalid bytes replaced)")


class ReplayOutcome(BaseModel):
    event_id: str | None
    outcome: str = Field(
        description="handled; or duplicate, when the event had been handled meanwhile"
    )


class KeptEventReplayer(Protocol):
    """Hands a kept event to what consumes it again (a service's ``EventConsumer``, the
    gateway's ``DeliveryEngine``), found at ``app.state.consumer``: its outcome; raises
    ``EnvelopeError`` when it still breaks its contract (``NotHandledHere`` when its
    version is not handled here yet)."""

    async def replay(self, kept: RejectedEvent) -> str: ...


def rejected_events_router(read_scope: str, write_scope: str) -> APIRouter:
    """``GET /v1/rejected-events``: the caller's tenant's events this service kept unhandled;
    ``POST /v1/rejected-events/{id}/replay``: one of them handled again, once its cause
    is fixed (by the ``KeptEventReplayer`` at ``app.state.consumer``)."""
    router = APIRouter(prefix="/v1", tags=["operations"])
    # A dependency object, not an annotation: annotations are strings here (PEP 563)
    # and FastAPI could not resolve one naming this function's local ``read_scope``.
    reader = Depends(authorised(read_scope))
    writer = Depends(authorised(write_scope))
    # Events kept without a tenant (none, or not a NIS code) belong to no caller: the
    # hub's operators see them with this scope, as the gateway's unroutable documents.
    unroutable_scope = read_scope.partition(":")[0] + ":unroutable"

    def visible_to(caller: Caller) -> ColumnElement[bool]:
        mine = RejectedEvent.tenant == caller.tenant
        if unroutable_scope in caller.scopes:
            return or_(mine, RejectedEvent.tenant.is_(None))
        return mine

    @router.post(
        "/rejected-events/{kept_id}/replay",
        response_model=ReplayOutcome,
        responses=problem_responses(404, 409, 422),
    )
    async def replay_rejected_event(
        request: Request,
        store: StorageDep,
        kept_id: Annotated[int, Path(ge=1, le=LARGEST_INTEGER)],
        caller: Caller = writer,
    ) -> ReplayOutcome:
        """Hand a kept event to its handler again, once what kept it is fixed (the sender
        corrected it, the service was upgraded). Handled, it leaves the kept events; if
        it breaks its contract still, or its handler fails again, it stays, and the
        answer says why."""
        async with store.sessions() as session:
            kept = await session.scalar(
                select(RejectedEvent).where(RejectedEvent.id == kept_id, visible_to(caller))
            )
        if kept is None:
            raise NotFound("kept event", str(kept_id))
        replayer: KeptEventReplayer = request.app.state.consumer
        try:
            outcome = await replayer.replay(kept)
        except NotHandledHere as exc:
            # Not "breaks its contract", which tells its reader never to replay the same
            # bytes: the service not upgraded yet, the same bytes replay fine once it is.
            raise ProblemError(
                409,
                "event-version-not-handled",
                "The event's version is not handled here",
                str(exc),
            ) from exc
        except EnvelopeError as exc:
            raise ProblemError(
                422, "event-breaks-its-contract", "The event still breaks its contract", str(exc)
            ) from exc
        except Exception as exc:
            raise ProblemError(
                409,
                "handler-failed-again",
                "The event's handler failed again",
                failure_text(exc),
            ) from exc
        return ReplayOutcome(event_id=kept.event_id, outcome=outcome)

    @router.get(
        "/rejected-events", response_model=Page[RejectedEventView], responses=problem_responses()
    )
    async def rejected_events(
        store: StorageDep,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Offset = 0,
        caller: Caller = reader,
    ) -> Page[RejectedEventView]:
        """Events addressed to this service that break their contract, or that its handler
        kept failing on, newest first: kept, never handled, for an operator to read and have
        the sender (or the service) corrected. With scope ``<service>:unroutable``, those
        kept without a tenant too."""
        mine = visible_to(caller)
        async with store.sessions() as session:
            rows, total = await listing_page(
                session,
                RejectedEvent,
                [mine],
                [RejectedEvent.id.desc()],
                limit=limit,
                offset=offset,
            )
            items = [
                RejectedEventView(
                    id=row.id,
                    event_id=row.event_id,
                    event_type=row.event_type,
                    topic=row.topic,
                    reason=row.reason,
                    received_at=row.received_at,
                    data=row.value.decode("utf-8", "replace"),
                )
                for row in rows
            ]
        return Page[RejectedEventView](items=items, total=total, limit=limit, offset=offset)

    return router
