"""The kernel's consumer keeps records that break the envelope's contract, on SQLite and
PostgreSQL: attributes PostgreSQL would refuse must not stop the record being kept."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import CloudEvent, headers_as_text, to_record
from contracts.events.gateway import DeliveryReceipt
from kernel.consumer import EventConsumer, RejectedEvent
from tests.support.databases import migrated_sessions
from tests.unit import test_consumer as unit
from tests.unit.test_consumer import MIGRATIONS, receipt

pytestmark = pytest.mark.integration


@pytest.fixture
async def sessions(
    database: tuple[str, str | None],
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with migrated_sessions(database, "test", MIGRATIONS) as sessions:
        yield sessions


async def test_records_whose_attributes_break_the_contract_are_kept_not_handled(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    handled: list[str] = []

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        handled.append(event.id)

    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    record = to_record(receipt())
    headers = headers_as_text(record.headers)
    broken = {
        "a 300-character id": {**headers, "ce_id": "i" * 300},
        "a 6-digit tenant": {**headers, "ce_id": "t", "ce_tenant": "921370"},
        "a NUL in the subject": {**headers, "ce_id": "n", "ce_subject": "mail\x00-1"},
        "a time without offset": {**headers, "ce_id": "z", "ce_time": "2026-12-07T10:00:00"},
        "a time UTC cannot hold": {**headers, "ce_id": "o", "ce_time": "0001-01-01T00:00+01:00"},
    }

    outcomes = [
        await consumer.handle(attributes, record.value, record.topic)
        for attributes in (*broken.values(), broken["a 6-digit tenant"])
    ]

    assert outcomes == ["kept"] * len(broken) + ["duplicate"]
    assert handled == []
    async with sessions() as session:
        kept = (await session.scalars(select(RejectedEvent).order_by(RejectedEvent.id))).all()
    # An id the envelope refuses tells no record from another: kept, under no id.
    assert [row.event_id for row in kept] == [None, "t", "n", "z", "o"]
    assert kept[0].headers["ce_id"] == "i" * 300
    assert kept[1].tenant is None  # shown to no tenant rather than not kept
    assert "ce_id is 1 to 64 characters, not 300" in kept[0].reason
    assert "control character" in kept[2].reason
    assert "no UTC offset" in kept[3].reason
    # The record as it came, for an operator to read.
    assert kept[2].headers["ce_subject"] == "mail\x00-1"


async def test_the_inbox_forgets_events_handled_long_ago(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    await unit.test_the_inbox_forgets_events_handled_long_ago_a_chunk_at_a_time(
        sessions, monkeypatch
    )
