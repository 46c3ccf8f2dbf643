"""The operators' API and dashboard: what was delivered, what failed, and replay;
what came in from outside (``/v1/inbound``) and how the polls of each outside source
went (``/v1/inbound/sources``); the tenants' certificates and their end
(``/v1/certificates``).

Scopes: ``gateway:read`` reads the caller's tenant's deliveries, inbound
documents and sources; ``gateway:operate`` replays; ``gateway:unroutable`` (the hub's
operators, whatever their token's tenant) also sees the inbound documents no
tenant could receive, which belong to no tenant, and the sources that are no single
tenant's (the Peppol access points, a NOTICe instance no tenant names).

``/v1/rejected-events`` (``kernel.api``, included by ``gateway.main``) lists and
replays, with the same scopes, the records of routed types kept for their broken
envelope; ``gateway:unroutable`` also sees those kept without a tenant.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import defer

from gateway.connectors.soap import TenantCertificate
from gateway.deliveries import WITHOUT_STORED_EVENT, DeliveryRecord
from gateway.engine import DeliveryEngine
from gateway.inbound.health import POLL_HEALTH, SourceHealth
from gateway.inbound.records import InboundDocument, WaitingItem
from kernel.api import LARGEST_INTEGER, RequestModel
from kernel.auth import CallerDep
from kernel.errors import NotFound

DASHBOARD_HTML = Path(__file__).with_name("dashboard.html")


#: Where a listing's page starts: the ``next_cursor`` of the previous page. Bounded as the
#: database's ids are: a larger one was a 500 (it could not be bound to the statement).
Cursor = Annotated[
    int | None,
    Query(ge=1, le=LARGEST_INTEGER, description="next_cursor of the previous page"),
]


class DeliveryView(BaseModel):
    idempotency_key: str
    event_id: str
    event_type: str
    subject: str
    route: str
    connector: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    external_reference: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: DeliveryRecord) -> DeliveryView:
        return cls.model_validate(record, from_attributes=True)


class DeliveryPage(BaseModel):
    items: list[DeliveryView]
    next_cursor: int | None


class ReplayAll(RequestModel):
    status: Literal["failed", "dead"]
    route: str | None = Field(default=None, max_length=64)
    connector: str | None = Field(default=None, max_length=64)


class Replayed(BaseModel):
    replayed: int


class StatusCount(BaseModel):
    connector: str
    status: str
    count: int


def sessions_of(request: Request) -> async_sessionmaker[AsyncSession]:
    factory: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return factory


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/deliveries", tags=["deliveries"])

    @api.get("", response_model=DeliveryPage)
    async def list_deliveries(
        request: Request,
        caller: CallerDep,
        status: Literal["retrying", "delivered", "failed", "dead"] | None = None,
        subject: str | None = None,
        limit: int = Query(default=50, ge=1, le=500),
        cursor: Cursor = None,
    ) -> DeliveryPage:
        """The caller's tenant's deliveries, newest first."""
        caller.require("gateway:read")
        query = (
            select(DeliveryRecord)
            .options(*WITHOUT_STORED_EVENT)
            .where(DeliveryRecord.tenant == caller.tenant)
        )
        if status:
            query = query.where(DeliveryRecord.status == status)
        if subject:
            query = query.where(DeliveryRecord.subject == subject)
        if cursor:
            query = query.where(DeliveryRecord.id < cursor)
        async with sessions_of(request)() as session:
            rows = list(
                (await session.scalars(query.order_by(DeliveryRecord.id.desc()).limit(limit))).all()
            )
        return DeliveryPage(
            items=[DeliveryView.of(r) for r in rows],
            next_cursor=rows[-1].id if len(rows) == limit else None,
        )

    @api.get("/summary", response_model=list[StatusCount])
    async def summary(request: Request, caller: CallerDep) -> list[StatusCount]:
        """How many deliveries per connector and status, for the dashboard."""
        caller.require("gateway:read")
        query = (
            select(DeliveryRecord.connector, DeliveryRecord.status, func.count())
            .where(DeliveryRecord.tenant == caller.tenant)
            .group_by(DeliveryRecord.connector, DeliveryRecord.status)
        )
        async with sessions_of(request)() as session:
            rows = (await session.execute(query)).all()
        return [StatusCount(connector=c, status=s, count=n) for c, s, n in rows]

    # ``path``: an event id may hold a "/" (``vendor/2026/0001``), which the client's %2F
    # does not hide (the path is decoded before routing); the str converter answered 404.
    @api.get("/{key:path}", response_model=DeliveryView)
    async def get_delivery(request: Request, caller: CallerDep, key: str) -> DeliveryView:
        caller.require("gateway:read")
        async with sessions_of(request)() as session:
            record = await session.scalar(
                select(DeliveryRecord)
                .options(*WITHOUT_STORED_EVENT)
                .where(
                    DeliveryRecord.idempotency_key == key, DeliveryRecord.tenant == caller.tenant
                )
            )
        if record is None:
            raise NotFound("delivery", key)
        return DeliveryView.of(record)

    @api.post("/replay", response_model=Replayed)
    async def replay_all(request: Request, caller: CallerDep, body: ReplayAll) -> Replayed:
        """Try again every failed or dead delivery of the caller's tenant, of a route or a
        connector if given: after a target's outage, or once a wrong key is fixed."""
        caller.require("gateway:operate")
        engine: DeliveryEngine = request.app.state.engine
        count = await engine.replay_all(caller.tenant, body.status, body.route, body.connector)
        return Replayed(replayed=count)

    @api.post("/{key:path}/replay", response_model=DeliveryView)
    async def replay(request: Request, caller: CallerDep, key: str) -> DeliveryView:
        """Try a failed or dead delivery again, with the same idempotency key; 409
        ``not-replayable`` for one in another state (a retrying one keeps its next attempt)."""
        caller.require("gateway:operate")
        engine: DeliveryEngine = request.app.state.engine
        record = await engine.replay_delivery(key, caller.tenant)
        if record is None:
            raise NotFound("delivery", key)
        return DeliveryView.of(record)

    return api


#: Sees the inbound documents addressed to no tenant of the hub.
UNROUTABLE_SCOPE = "gateway:unroutable"


class InboundView(BaseModel):
    id: int
    channel: str
    #: Which source of the channel (a Peppol access point's URL; empty for NOTICe).
    source: str
    source_message_id: str
    tenant: str | None
    sender: str
    receiver: str
    document_type: str
    size: int
    sha256: str
    status: str
    source_status: str
    reason: str | None
    event_id: str | None
    received_at: datetime | None
    fetched_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: InboundDocument) -> InboundView:
        return cls.model_validate(record, from_attributes=True)


class InboundPage(BaseModel):
    items: list[InboundView]
    next_cursor: int | None


class WaitingView(BaseModel):
    id: int
    channel: str
    source: str
    source_message_id: str
    tenant: str | None
    reason: str
    tries: int
    first_failed_at: datetime
    last_failed_at: datetime
    next_try_at: datetime

    @classmethod
    def of(cls, item: WaitingItem) -> WaitingView:
        return cls.model_validate(item, from_attributes=True)


class WaitingPage(BaseModel):
    items: list[WaitingView]
    next_cursor: int | None


class SourceHealthView(BaseModel):
    channel: str
    #: As ``hub_inbound_poll_failures_total`` labels it: an access point's URL, a NOTICe
    #: instance, the tenant of an oversight or opinions account.
    source: str
    tenant: str | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    consecutive_failures: int
    #: The kind of the last failure (``ConnectError``…), never its text: the log has it.
    last_error: str | None

    @classmethod
    def of(cls, health: SourceHealth) -> SourceHealthView:
        return cls.model_validate(health, from_attributes=True)


def inbound_router() -> APIRouter:
    api = APIRouter(prefix="/v1/inbound", tags=["inbound"])

    @api.get("", response_model=InboundPage)
    async def list_inbound(
        request: Request,
        caller: CallerDep,
        status: Literal["published", "unroutable", "refused"] | None = None,
        source_status: Literal["pending", "acknowledged", "rejected"] | None = None,
        sender: str | None = Query(default=None, description="Peppol participant, 0208:…"),
        receiver: str | None = None,
        limit: int = Query(default=50, ge=1, le=500),
        cursor: Cursor = None,
    ) -> InboundPage:
        """The documents fetched for the caller's tenant (and, with scope
        ``gateway:unroutable``, those for no tenant), newest first."""
        caller.require("gateway:read")
        if status == "unroutable":
            caller.require(UNROUTABLE_SCOPE)
        visible = InboundDocument.tenant == caller.tenant
        if UNROUTABLE_SCOPE in caller.scopes:
            visible = or_(visible, InboundDocument.tenant.is_(None))
        # The documents themselves (up to 16 MiB each), which no view shows, stay in the
        # database: a page of 500 held gigabytes.
        query = select(InboundDocument).options(defer(InboundDocument.document)).where(visible)
        for column, value in (
            (InboundDocument.status, status),
            (InboundDocument.source_status, source_status),
            (InboundDocument.sender, sender),
            (InboundDocument.receiver, receiver),
        ):
            if value:
                query = query.where(column == value)
        if cursor:
            query = query.where(InboundDocument.id < cursor)
        async with sessions_of(request)() as session:
            rows = list(
                (
                    await session.scalars(query.order_by(InboundDocument.id.desc()).limit(limit))
                ).all()
            )
        return InboundPage(
            items=[InboundView.of(r) for r in rows],
            next_cursor=rows[-1].id if len(rows) == limit else None,
        )

    @api.get("/waiting", response_model=WaitingPage)
    async def list_waiting(
        request: Request,
        caller: CallerDep,
        limit: int = Query(default=50, ge=1, le=500),
        cursor: Cursor = None,
    ) -> WaitingPage:
        """The items a source lists that could not be taken yet (an error page, a timeout):
        tried again at later polls, further and further apart (``next_try_at``), and
        here until taken. The caller's tenant's (and, with scope ``gateway:unroutable``,
        those whose tenant is not known yet), the longest waiting first."""
        caller.require("gateway:read")
        visible = WaitingItem.tenant == caller.tenant
        if UNROUTABLE_SCOPE in caller.scopes:
            visible = or_(visible, WaitingItem.tenant.is_(None))
        query = select(WaitingItem).where(visible)
        if cursor:
            query = query.where(WaitingItem.id > cursor)
        async with sessions_of(request)() as session:
            rows = list((await session.scalars(query.order_by(WaitingItem.id).limit(limit))).all())
        return WaitingPage(
            items=[WaitingView.of(r) for r in rows],
            next_cursor=rows[-1].id if len(rows) == limit else None,
        )

    @api.get("/sources", response_model=list[SourceHealthView])
    async def list_sources(caller: CallerDep) -> list[SourceHealthView]:
        """How the polls of each outside source went: when one last worked, when one last
        failed and of what kind of error, and how many failed in a row since. Those of the
        caller's tenant (and, with scope ``gateway:unroutable``, those that are no single
        tenant's), by channel and source. Kept in memory by this gateway process only: it
        lists no source before its first poll since the gateway started."""
        caller.require("gateway:read")
        everyone = UNROUTABLE_SCOPE in caller.scopes
        return [
            SourceHealthView.of(health)
            for health in POLL_HEALTH.sources()
            if health.tenant == caller.tenant or (everyone and health.tenant is None)
        ]

    return api


class CertificateView(BaseModel):
    connector: str
    connector_type: str
    subject: str
    expires_at: datetime
    days_left: int


def certificates_router() -> APIRouter:
    api = APIRouter(prefix="/v1/certificates", tags=["certificates"])

    @api.get("", response_model=list[CertificateView])
    async def list_certificates(request: Request, caller: CallerDep) -> list[CertificateView]:
        """The certificates the caller's tenant's connectors sign or authenticate with (the
        e-Box and oversight signatures, the KSZ-BCSS's TLS client), the soonest to end first:
        a target refuses an expired one without saying why. As read when the gateway started
        (a renewed file is read at the next start)."""
        caller.require("gateway:read")
        connectors: dict[tuple[str, str], object] = request.app.state.resources[2]
        now = datetime.now(UTC)
        views = []
        for (tenant, name), connector in connectors.items():
            certificate = getattr(connector, "certificate", None)
            if tenant != caller.tenant or not isinstance(certificate, TenantCertificate):
                continue
            views.append(
                CertificateView(
                    connector=name,
                    connector_type=str(getattr(connector, "type_name", "")),
                    subject=certificate.subject,
                    expires_at=certificate.expires_at,
                    days_left=(certificate.expires_at - now).days,
                )
            )
        return sorted(views, key=lambda view: (view.expires_at, view.connector))

    return api


def dashboard_router() -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    @pages.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> str:
        # The page holds no data: it asks for a token and reads the API with it,
        # so the dashboard shows exactly what that tenant's token may see.
        return DASHBOARD_HTML.read_text(encoding="utf-8")

    return pages
