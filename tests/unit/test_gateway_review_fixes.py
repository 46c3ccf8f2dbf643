"""The operators' API lists deliveries and inbound documents without reading what they
carry (the stored event, the document itself), which no view shows: each row held up to
16 MiB, and a page of 500 gigabytes. A delivery is replayed only when that changes
something, and one whose event id holds a "/" is read and replayed as any other."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.api import inbound_router, router
from gateway.deliveries import MIGRATIONS
from gateway.engine import DeliveryEngine
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.inbound.records import InboundDocument
from kernel.auth import Caller, current_caller
from kernel.errors import PROBLEM_CONTENT_TYPE, install_problem_handlers
from tests.support.clock import Clock
from tests.support.databases import sqlite_sessions
from tests.unit.test_delivery_engine import (
    TENANT,
    FakeConnector,
    as_record,
    deliveries,
    mail_event,
    make_engine,
)

#: The columns that hold what a delivery or an inbound document carries.
CARRIED = re.compile(r"\b(record_value|record_headers|document)\b")


async def test_the_listings_leave_the_stored_events_and_documents_in_the_database(
    tmp_path: Path,
) -> None:
    clock = Clock()
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        await make_engine(sessions, FakeConnector(), clock).handle_record(
            *as_record(mail_event()), "courrier.events"
        )
        async with sessions() as session, session.begin():
            session.add(
                InboundDocument(
                    channel="peppol",
                    source_message_id="m-1",
                    tenant=TENANT,
                    sender="0208:0123456749",
                    receiver="0208:0216987614",
                    document_type="invoice",
                    size=7,
                    sha256="0" * 64,
                    document=b"<Invoice/>",
                    status="published",
                    source_status="acknowledged",
                    fetched_at=clock.now,
                    updated_at=clock.now,
                )
            )
        app = FastAPI()
        app.include_router(router())
        app.include_router(inbound_router())
        app.state.sessions = sessions
        app.dependency_overrides[current_caller] = lambda: Caller(
            tenant=TENANT, scopes=frozenset({"gateway:read"}), subject="operator"
        )
        selects: list[str] = []

        def remember_select(*args: Any) -> None:
            statement = args[2]
            if statement.lstrip().upper().startswith("SELECT"):
                selects.append(statement)

        event.listen(sessions.kw["bind"].sync_engine, "before_cursor_execute", remember_select)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://gateway"
        ) as client:
            deliveries = (await client.get("/v1/deliveries")).json()["items"]
            inbound = (await client.get("/v1/inbound")).json()["items"]
            key = deliveries[0]["idempotency_key"]
            one = (await client.get(f"/v1/deliveries/{key}")).json()

    assert [d["subject"] for d in deliveries] == ["mail-1"] and one["subject"] == "mail-1"
    assert [d["source_message_id"] for d in inbound] == ["m-1"]
    assert len(selects) == 3
    assert not [statement for statement in selects if CARRIED.search(statement)]


@asynccontextmanager
async def operators_api(
    sessions: async_sessionmaker[AsyncSession], engine: DeliveryEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """``/v1/deliveries`` for an operator of ``TENANT`` who may read and replay."""
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(router())
    app.state.sessions, app.state.engine = sessions, engine
    app.dependency_overrides[current_caller] = lambda: Caller(
        tenant=TENANT, scopes=frozenset({"gateway:read", "gateway:operate"}), subject="operator"
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://gateway"
    ) as client:
        yield client


async def test_replaying_a_retrying_delivery_is_refused_with_its_next_attempt(
    tmp_path: Path,
) -> None:
    # After a target's outage an operator replayed a retrying delivery to have it go now:
    # 200, as if replayed, and its next attempt stayed minutes away.
    clock = Clock()
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        engine = make_engine(sessions, FakeConnector([RetryableDeliveryError("HTTP 503")]), clock)
        await engine.handle_record(*as_record(mail_event()), "courrier.events")
        [before] = await deliveries(sessions)
        assert before.status == "retrying" and before.next_attempt_at is not None
        async with operators_api(sessions, engine) as client:
            answer = await client.post(f"/v1/deliveries/{before.idempotency_key}/replay")
        [after] = await deliveries(sessions)

    assert answer.status_code == 409
    assert answer.headers["content-type"] == PROBLEM_CONTENT_TYPE
    problem = answer.json()
    assert problem["type"].endswith("/not-replayable")
    when = before.next_attempt_at.isoformat(timespec="seconds")
    assert "already retrying" in problem["detail"] and when in problem["detail"]
    assert (problem["delivery_status"], problem["next_attempt_at"]) == ("retrying", when)
    assert (after.attempts, after.next_attempt_at) == (before.attempts, before.next_attempt_at)


async def test_a_second_replay_of_the_same_dead_delivery_is_refused(tmp_path: Path) -> None:
    # A double click on the dashboard's Replay answered 200 twice.
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        engine = make_engine(sessions, FakeConnector([PermanentDeliveryError("no e-Box")]), Clock())
        await engine.handle_record(*as_record(mail_event()), "courrier.events")
        [failed] = await deliveries(sessions)
        async with operators_api(sessions, engine) as client:
            first = await client.post(f"/v1/deliveries/{failed.idempotency_key}/replay")
            second = await client.post(f"/v1/deliveries/{failed.idempotency_key}/replay")

    assert (first.status_code, first.json()["status"]) == (200, "retrying")
    assert second.status_code == 409 and second.json()["type"].endswith("/not-replayable")


async def test_a_delivery_whose_event_id_holds_a_slash_is_read_and_replayed(
    tmp_path: Path,
) -> None:
    # A producer outside the hub may name its events "vendor/2026/0001": the dashboard's
    # %2F is decoded before routing, and both answered 404.
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        script: list[Exception | str] = [PermanentDeliveryError("no e-Box")] * 2
        engine = make_engine(sessions, FakeConnector(script), Clock())
        headers, value = as_record(mail_event("mail-1"))
        await engine.handle_record({**headers, "ce_id": "vendor/2026/0001"}, value, "x")
        await engine.handle_record(*as_record(mail_event("mail-2")), "x")
        slashed, plain = await deliveries(sessions)
        assert slashed.idempotency_key == "vendor/2026/0001:outgoing-mail-ebox"
        async with operators_api(sessions, engine) as client:
            encoded = quote(slashed.idempotency_key, safe="")
            one = await client.get(f"/v1/deliveries/{encoded}")
            replayed = await client.post(f"/v1/deliveries/{encoded}/replay")
            # The routes beside them still answer as before.
            ordinary = await client.get(f"/v1/deliveries/{plain.idempotency_key}")
            summary = await client.get("/v1/deliveries/summary")
            all_failed = await client.post("/v1/deliveries/replay", json={"status": "failed"})
            unknown = await client.get(f"/v1/deliveries/{encoded}x")

    assert (one.status_code, one.json()["idempotency_key"]) == (200, slashed.idempotency_key)
    assert (replayed.status_code, replayed.json()["status"]) == (200, "retrying")
    assert (ordinary.status_code, ordinary.json()["subject"]) == (200, "mail-2")
    assert summary.status_code == 200 and isinstance(summary.json(), list)
    assert all_failed.json() == {"replayed": 1}  # mail-2's; the other is retrying already
    assert unknown.status_code == 404 and unknown.json()["type"].endswith("/not-found")
