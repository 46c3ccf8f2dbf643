"""The delivery engine when its database refuses writes, or a connector returns what it
should not: nothing is sent twice, and no fetch is held for ever."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway import engine as engine_module
from gateway.connectors.base import Delivery, DeliveryResult
from gateway.deliveries import MIGRATIONS
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from tests.support.clock import Clock
from tests.support.databases import sqlite_sessions
from tests.unit.test_delivery_engine import (
    FakeConnector,
    as_record,
    deliveries,
    mail_event,
    make_engine,
    receipts,
)


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        yield sessions


@contextlib.asynccontextmanager
async def read_only_database(_: object) -> AsyncIterator[Any]:
    raise OperationalError("INSERT", {}, Exception("cannot execute INSERT in a read-only"))
    yield  # pragma: no cover


async def test_a_fetch_whose_recording_fails_is_not_sent_again_when_read_again(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failover left the database answering reads and refusing writes: the fetch was
    # read again every second, and its letter sent each time (a copy in the citizen's
    # e-Box each time: the real e-Box REST ignores the idempotency key).
    connector = FakeConnector(["ebox-1", PermanentDeliveryError("no e-Box")])
    engine = make_engine(sessions, connector, Clock())
    delivered, refused = mail_event("mail-1"), mail_event("mail-2")
    fetch = [(*as_record(delivered), "courrier.events"), (*as_record(refused), "courrier.events")]

    monkeypatch.setattr(engine_module, "write_transaction", read_only_database)
    for _ in range(3):
        with pytest.raises(OperationalError):
            await engine.handle_records(fetch)
    monkeypatch.undo()
    await engine.handle_records(fetch)

    assert [call.event.id for call in connector.calls] == [delivered.id, refused.id]
    records = {r.event_id: r for r in await deliveries(sessions)}
    assert (records[delivered.id].status, records[delivered.id].attempts) == ("delivered", 1)
    assert records[delivered.id].external_reference == "ebox-1"
    assert (records[refused.id].status, records[refused.id].last_error) == ("failed", "no e-Box")
    assert sorted(r.outcome for r in await receipts(sessions)) == ["delivered", "failed"]
    # Recorded, they are forgotten: read again, the fetch is recognised as recorded.
    await engine.handle_records(fetch)
    assert len(connector.calls) == 2


async def test_a_retry_is_attempted_again_when_its_recording_failed(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only what the target ended is kept: a retry's next attempt is what it waits for.
    connector = FakeConnector([RetryableDeliveryError("busy"), "ebox-1"])
    engine = make_engine(sessions, connector, Clock())
    fetch = [(*as_record(mail_event()), "courrier.events")]

    monkeypatch.setattr(engine_module, "write_transaction", read_only_database)
    with pytest.raises(OperationalError):
        await engine.handle_records(fetch)
    monkeypatch.undo()
    await engine.handle_records(fetch)

    assert len(connector.calls) == 2
    [record] = await deliveries(sessions)
    assert (record.status, record.external_reference) == ("delivered", "ebox-1")


class NumberReturningConnector:
    """A vendor plugin returning the vendor's JSON number as its reference."""

    type_name = "plugin"

    def __init__(self) -> None:
        self.calls: list[Delivery] = []

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        self.calls.append(delivery)
        return DeliveryResult(external_reference=12345)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        return None


async def test_a_result_that_is_no_text_is_a_connector_error_retried_then_dead(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # It failed the whole fetch outside the connector's guard: re-read and re-sent every
    # second, for every tenant of the partition, and its retries never counted.
    connector, clock = NumberReturningConnector(), Clock()
    engine = make_engine(sessions, connector, clock, max_attempts=3)  # type: ignore[arg-type]
    fetch = [(*as_record(mail_event()), "courrier.events")]

    await engine.handle_records(fetch)
    [record] = await deliveries(sessions)
    assert (record.status, record.attempts) == ("retrying", 1)
    assert record.last_error is not None and "internal connector error" in record.last_error
    for _ in range(2):
        clock.advance(10)
        await engine.retry_due()

    [record] = await deliveries(sessions)
    assert (record.status, record.attempts) == ("dead", 3)
    assert len(connector.calls) == 3


async def test_outcomes_are_kept_when_recording_them_one_by_one_fails_too(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fetch's transaction met another replica's record, then the database went away
    # while the outcomes were recorded one by one: they were sent again at the next reading.
    connector = FakeConnector(["ebox-1"])
    engine = make_engine(sessions, connector, Clock())
    fetch = [(*as_record(mail_event()), "courrier.events")]

    @contextlib.asynccontextmanager
    async def raced(_: object) -> AsyncIterator[Any]:
        raise IntegrityError("INSERT", {}, Exception("recorded by another replica"))
        yield  # pragma: no cover

    async def away(*_: object) -> None:
        raise OperationalError("INSERT", {}, Exception("the database went away"))

    monkeypatch.setattr(engine_module, "write_transaction", raced)
    monkeypatch.setattr(engine, "_record_alone", away)
    with pytest.raises(OperationalError):
        await engine.handle_records(fetch)
    monkeypatch.undo()
    await engine.handle_records(fetch)

    assert len(connector.calls) == 1
    [record] = await deliveries(sessions)
    assert (record.status, record.external_reference) == ("delivered", "ebox-1")
