"""The operators' API lists deliveries and inbound documents without reading what they
carry (the stored event, the document itself), which no view shows: each row held up to
16 MiB, and a page of 500 gigabytes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import event

from gateway.api import inbound_router, router
from gateway.deliveries import MIGRATIONS
from gateway.inbound.records import InboundDocument
from kernel.auth import Caller, current_caller
from tests.support.clock import Clock
from tests.support.databases import sqlite_sessions
from tests.unit.test_delivery_engine import (
    TENANT,
    FakeConnector,
    as_record,
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
