"""The operators' API and dashboard: what was delivered, what failed, and replay."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.deliveries import DeliveryRecord
from gateway.engine import DeliveryEngine
from kernel.auth import CallerDep
from kernel.errors import Conflict, NotFound

DASHBOARD_HTML = Path(__file__).with_name("dashboard.html")


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


class StatusCount(BaseModel):
    connector: str
    status: str
    count: int


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/deliveries", tags=["deliveries"])

    def sessions_of(request: Request) -> async_sessionmaker[AsyncSession]:
        factory: async_sessionmaker[AsyncSession] = request.app.state.sessions
        return factory

    @api.get("", response_model=DeliveryPage)
    async def list_deliveries(
        request: Request,
        caller: CallerDep,
        status: Literal["retrying", "delivered", "failed", "dead"] | None = None,
        subject: str | None = None,
        limit: int = Query(default=50, ge=1, le=500),
        cursor: int | None = Query(default=None, description="next_cursor of the previous page"),
    ) -> DeliveryPage:
        """The caller's tenant's deliveries, newest first."""
        caller.require("gateway:read")
        query = select(DeliveryRecord).where(DeliveryRecord.tenant == caller.tenant)
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

    @api.get("/{key}", response_model=DeliveryView)
    async def get_delivery(request: Request, caller: CallerDep, key: str) -> DeliveryView:
        caller.require("gateway:read")
        async with sessions_of(request)() as session:
            record = await session.scalar(
                select(DeliveryRecord).where(
                    DeliveryRecord.idempotency_key == key, DeliveryRecord.tenant == caller.tenant
                )
            )
        if record is None:
            raise NotFound("delivery", key)
        return DeliveryView.of(record)

    @api.post("/{key}/replay", response_model=DeliveryView)
    async def replay(request: Request, caller: CallerDep, key: str) -> DeliveryView:
        """Try a failed or dead delivery again, with the same idempotency key."""
        caller.require("gateway:operate")
        engine: DeliveryEngine = request.app.state.engine
        record = await engine.replay(key, caller.tenant)
        if record is None:
            raise NotFound("delivery", key)
        if record.status != "retrying":
            raise Conflict(
                "not-replayable",
                f"Delivery {key} is {record.status}; only failed or dead deliveries are replayed.",
            )
        return DeliveryView.of(record)

    return api


def dashboard_router() -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    @pages.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> str:
        # The page holds no data: it asks for a token and reads the API with it,
        # so the dashboard shows exactly what that tenant's token may see.
        return DASHBOARD_HTML.read_text(encoding="utf-8")

    return pages
