"""The kernel's event consumer: once per event, and a broken event of ours is kept, not lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import TopicPartition
from fastapi import FastAPI
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import kernel.consumer
from contracts.envelope import CloudEvent, headers_as_text, new_event, to_record
from contracts.events.gateway import DeliveryReceipt
from kernel.api import rejected_events_router
from kernel.app import BackgroundTask, create_app
from kernel.auth import issue_token
from kernel.consumer import EventConsumer, InboxEntry, Incoming, RejectedEvent
from kernel.database import utcnow
from kernel.kafka import FETCH_MAX_WAIT_MS, FetchPacing
from kernel.migrations import Migration, create_tables, table_of
from kernel.settings import HubSettings
from kernel.tenants import Tenant
from tests.support.databases import sqlite_sessions
from tests.support.servers import serving

TENANT = "92137"
MIGRATIONS = [
    Migration(
        1, "inbox and kept events", create_tables(*map(table_of, (InboxEntry, RejectedEvent)))
    )
]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "consumer.db", "test", MIGRATIONS) as sessions:
        yield sessions


def receipt() -> CloudEvent:
    data = DeliveryReceipt(
        source_event_id="e-1",
        source_event_type="courrier.outgoing_mail.send_requested.v1",
        route="outgoing-mail-ebox",
        connector="ebox_rest",
        idempotency_key="e-1:outgoing-mail-ebox",
        outcome="delivered",
        external_reference="ebox-1",
        attempts=1,
    )
    return new_event(data, tenant=TENANT, subject="mail-1", source="urn:hub:gateway")


async def test_an_event_is_handled_once(sessions: async_sessionmaker[AsyncSession]) -> None:
    handled: list[str] = []

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        handled.append(event.id)

    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    record = to_record(receipt())
    headers = headers_as_text(record.headers)
    outcomes = [await consumer.handle(headers, record.value, record.topic) for _ in range(2)]
    assert outcomes == ["handled", "duplicate"] and len(handled) == 1


async def test_the_inbox_forgets_events_handled_long_ago_a_chunk_at_a_time(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        return None

    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    records = [to_record(receipt()) for _ in range(5)]
    for record in records:
        await consumer.handle(headers_as_text(record.headers), record.value, record.topic)
    async with sessions() as session, session.begin():
        entries = (await session.scalars(select(InboxEntry))).all()
        for entry in entries[:3]:  # handled 15 days ago
            entry.handled_at = utcnow() - timedelta(days=15)
    monkeypatch.setattr(kernel.consumer, "INBOX_PURGE_CHUNK", 2)

    assert await consumer.purge_inbox() == 3
    async with sessions() as session:
        kept = set((await session.scalars(select(InboxEntry.event_id))).all())
    assert kept == {entry.event_id for entry in entries[3:]}  # the recent ones stay


async def test_a_broken_event_of_ours_is_kept_once_and_shown_to_its_tenant(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        raise AssertionError("a broken event must never reach its handler")

    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    record = to_record(receipt())
    headers = headers_as_text(record.headers)
    broken = json.loads(record.value)
    broken["attempts"] = 0  # the contract says at least 1
    value = json.dumps(broken).encode()

    outcomes = [await consumer.handle(headers, value, record.topic) for _ in range(2)]
    other = {**headers, "ce_type": "somebody.else.thing.v1", "ce_id": "x"}
    skipped = await consumer.handle(other, b"{not json", record.topic)
    nobodys = {**headers, "ce_id": "nobodys", "ce_tenant": "Sambreville"}
    assert await consumer.handle(nobodys, record.value, record.topic) == "kept"

    assert outcomes == ["kept", "duplicate"] and skipped == "ignored"
    async with sessions() as session:
        [kept, tenantless] = (await session.scalars(select(RejectedEvent))).all()
    assert (kept.event_id, kept.tenant, kept.value) == (headers["ce_id"], TENANT, value)
    assert "attempts" in kept.reason
    assert tenantless.tenant is None

    # The tenant's operator reads it; another tenant does not see it.
    settings = HubSettings(var_dir=tmp_path / "var")

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        app.state.sessions, app.state.relay = sessions, None
        app.state.tenants = {
            code: Tenant(code, code, tmp_path / f"{code}.yaml", {}) for code in (TENANT, "62063")
        }
        return []

    app = create_app("test", settings, title="test", description="kept events", startup=startup)
    app.include_router(rejected_events_router("test:read", "test:write"))
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        for tenant, scopes, expected in (
            (TENANT, ["test:read"], [kept.event_id]),
            ("62063", ["test:read"], []),
            # The hub's operators also see what was kept for no tenant.
            ("62063", ["test:read", "test:unroutable"], ["nobodys"]),
        ):
            token = issue_token(settings, tenant, scopes)
            page = await client.get(
                "/v1/rejected-events", headers={"Authorization": f"Bearer {token}"}
            )
            assert page.status_code == 200, page.text
            assert [item["event_id"] for item in page.json()["items"]] == expected


async def test_a_record_kept_by_two_consumers_at_once_is_kept_once(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = EventConsumer(component="test", sessions=sessions, handlers={})
    record = to_record(receipt())
    headers = headers_as_text(record.headers)
    assert await consumer.keep_rejected(headers, record.value, record.topic, "first")

    # The other consumer's commit came after this one looked: its lookup found nothing.
    looked_up = EventConsumer._kept_already
    lookups: list[bool] = []

    async def missed_once(session: AsyncSession, event_id: str) -> bool:
        found = await looked_up(session, event_id)
        lookups.append(found)
        return found and len(lookups) > 1

    monkeypatch.setattr(EventConsumer, "_kept_already", staticmethod(missed_once))
    assert not await consumer.keep_rejected(headers, record.value, record.topic, "again")
    assert lookups == [True, True]  # the one missed, then the check after the refusal
    async with sessions() as session:
        reasons = (await session.scalars(select(RejectedEvent.reason))).all()
    assert reasons == ["first"]


async def test_a_corrected_copy_sent_under_a_kept_records_id_is_handled(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    handled: list[str] = []

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        handled.append(event.id)

    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    corrected = incoming(receipt())
    kept = await consumer.keep_rejected(
        corrected.headers, b'{"attempts": 0}', corrected.topic, "attempts: at least 1"
    )
    # Its batch undone by another event's failure, it goes alone: not the kept one.
    await consumer._handle_until_done(corrected)
    assert kept and handled == [corrected.headers["ce_id"]]


async def test_an_event_its_handler_cannot_take_until_an_operator_acts_is_kept_at_once(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[str] = []

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        attempts.append(event.subject or "")
        if event.subject == "mail-2":
            raise kernel.consumer.KeptUntilFixed("tenant 57081 is not configured here")

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    events = [receipt_for(f"mail-{n}") for n in (1, 2, 3)]
    await consume_one_fetch(consumer, events)

    assert attempts.count("mail-2") == 2  # in the batch, then alone: not tried again
    assert await inbox_ids(sessions) == {events[0].id, events[2].id}
    async with sessions() as session:
        [kept] = (await session.scalars(select(RejectedEvent))).all()
    assert (kept.event_id, kept.reason) == (events[1].id, "tenant 57081 is not configured here")


async def test_different_records_without_a_usable_id_are_each_kept(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    consumer = EventConsumer(component="test", sessions=sessions, handlers={})
    record = to_record(receipt())
    headers = headers_as_text(record.headers)
    blank = {**headers, "ce_id": ""}
    kept = [
        await consumer.keep_rejected(blank, b"first", record.topic, "ce_id is empty"),
        await consumer.keep_rejected(blank, b"second", record.topic, "ce_id is empty"),
        await consumer.keep_rejected({**headers, "ce_id": "x\x00"}, b"third", record.topic, "NUL"),
        await consumer.keep_rejected({**headers, "ce_id": "x\x01"}, b"fourth", record.topic, "SOH"),
    ]
    assert kept == [True] * 4
    async with sessions() as session:
        rows = (await session.scalars(select(RejectedEvent).order_by(RejectedEvent.id))).all()
    assert [(row.event_id, row.value) for row in rows] == [
        (None, b"first"),
        (None, b"second"),
        (None, b"third"),
        (None, b"fourth"),
    ]


def incoming(event: CloudEvent) -> Incoming:
    record = to_record(event)
    return Incoming(headers_as_text(record.headers), record.value, record.topic)


def receipt_for(mail: str) -> CloudEvent:
    return new_event(
        receipt().data_as(DeliveryReceipt), tenant=TENANT, subject=mail, source="urn:hub:gateway"
    )


async def inbox_ids(sessions: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sessions() as session:
        return set(await session.scalars(select(InboxEntry.event_id)))


async def test_a_batch_is_handled_in_order_in_one_transaction_and_each_event_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    handled: list[str] = []

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        # Each handler sees what the earlier ones of its batch wrote (here: a row each).
        written = list(await session.scalars(select(RejectedEvent.event_id)))
        handled.append(f"{event.subject} after {len(written)}")
        session.add(
            RejectedEvent(
                event_id=event.id,
                event_type=event.type,
                topic="t",
                headers={},
                value=b"",
                reason="written by the handler",
                received_at=utcnow(),
            )
        )

    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    first, second, earlier = receipt_for("mail-1"), receipt_for("mail-2"), receipt_for("mail-0")
    assert await consumer.handle_batch([incoming(earlier)]) == ["handled"]
    other = Incoming({"ce_type": "somebody.else.thing.v1", "ce_id": "x"}, b"{", "t")

    outcomes = await consumer.handle_batch(
        [incoming(first), other, incoming(first), incoming(earlier), incoming(second)]
    )

    assert outcomes == ["handled", "ignored", "duplicate", "duplicate", "handled"]
    assert handled == ["mail-0 after 0", "mail-1 after 1", "mail-2 after 2"]
    assert await inbox_ids(sessions) == {first.id, second.id, earlier.id}


class OneFetch:
    """A Kafka consumer that returns one fetch, then stops the loop; records its commits."""

    def __init__(self, records: list[Incoming]) -> None:
        self._records, self.commits = records, list[dict[Any, int]]()
        self._assigned = {TopicPartition(records[0].topic, 0)} if records else set()

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        if not self._records:
            raise asyncio.CancelledError  # the loop ends here, as at a shutdown
        partition = TopicPartition(self._records[0].topic, 0)
        records = [
            SimpleNamespace(
                headers=[(k, v.encode()) for k, v in r.headers.items()],
                value=r.value,
                offset=offset,
            )
            for offset, r in enumerate(self._records, start=40)
        ]
        self._records = []
        return {partition: records}

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(offsets)

    def highwater(self, partition: TopicPartition) -> int | None:
        return None  # the broker's answer is not modelled here

    def assignment(self) -> set[TopicPartition]:
        return self._assigned


async def test_a_failing_handler_undoes_its_batch_and_the_events_go_one_by_one(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = {"mail-2": 3}  # mail-2's handler fails three times, then succeeds
    runs: list[str] = []

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        if failures.get(event.subject or "", 0) > 0:
            failures[event.subject or ""] -= 1
            raise RuntimeError("the register is away")
        runs.append(event.subject or "")

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    events = [receipt_for(f"mail-{n}") for n in (1, 2, 3)]

    with pytest.raises(RuntimeError):
        await consumer.handle_batch([incoming(e) for e in events])
    assert await inbox_ids(sessions) == set()  # mail-1's work was rolled back with the batch

    fetch = await consume_one_fetch(consumer, events)

    assert await inbox_ids(sessions) == {e.id for e in events}
    # mail-1 ran in both undone batches, then alone; mail-2 failed alone once, then passed.
    assert runs == ["mail-1", "mail-1", "mail-1", "mail-2", "mail-3"]
    # Committed once the batch was handled: the offset after its last record (40, 41, 42).
    assert fetch.commits == [{TopicPartition(DeliveryReceipt.TOPIC, 0): 43}]


async def consume_one_fetch(consumer: EventConsumer, events: list[CloudEvent]) -> OneFetch:
    """Run the consumer's loop over one fetch of ``events``, until it asks for the next."""
    fetch = OneFetch([incoming(e) for e in events])
    with pytest.raises(asyncio.CancelledError):
        await consumer._consume(fetch, FetchPacing(fetch, FETCH_MAX_WAIT_MS))  # type: ignore[arg-type]
    return fetch


async def fake_sleep(seconds: float) -> None:
    return None


async def test_an_event_its_handler_keeps_failing_on_is_kept_and_the_others_go_on(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[str] = []

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        attempts.append(event.subject or "")
        if event.subject == "mail-2":
            raise ValueError("a value the register refuses")  # will never pass

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    events = [receipt_for(f"mail-{n}") for n in (1, 2, 3)]
    fetch = await consume_one_fetch(consumer, events)

    assert await inbox_ids(sessions) == {events[0].id, events[2].id}
    assert attempts.count("mail-2") == 1 + kernel.consumer.HANDLER_ATTEMPTS  # batch, then alone
    async with sessions() as session:
        [kept] = (await session.scalars(select(RejectedEvent))).all()
    assert kept.event_id == events[1].id
    assert kept.reason == ("its handler failed 5 times: ValueError: a value the register refuses")
    assert fetch.commits == [{TopicPartition(DeliveryReceipt.TOPIC, 0): 43}]

    # Read again before the commit (a rebalance): the kept event is known, not failed on five
    # more times (a few dozen such, and the consumer outlasted its poll interval for ever).
    again = await consume_one_fetch(consumer, events)
    assert attempts.count("mail-2") == 2 + kernel.consumer.HANDLER_ATTEMPTS  # the batch's only
    assert again.commits == [{TopicPartition(DeliveryReceipt.TOPIC, 0): 43}]
    async with sessions() as session:
        assert len((await session.scalars(select(RejectedEvent))).all()) == 1


async def test_the_database_away_is_waited_out_however_long_it_lasts(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite locked; PostgreSQL restarting, full, or shut down (asyncpg's own errors while
    # connecting, and one SQLAlchemy wrapped).
    restarting = asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
    outage = [
        OperationalError("INSERT", {}, Exception("database is locked")),
        restarting,
        asyncpg.exceptions.TooManyConnectionsError("too many connections"),
        DBAPIError("INSERT", {}, asyncpg.exceptions.AdminShutdownError("terminating")),
    ] * 3

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        if outage:
            raise outage.pop()

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    event = receipt_for("mail-1")
    await consume_one_fetch(consumer, [event])

    assert await inbox_ids(sessions) == {event.id}  # handled once the database came back
    async with sessions() as session:
        assert (await session.scalars(select(RejectedEvent))).all() == []


async def test_a_handler_bug_sqlite_reports_is_kept_not_waited_out_as_an_outage(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite says "operational error" for a column that is not there (a migration not
    # applied) as for a lock; only the lock passes.
    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        await session.execute(text("UPDATE inbox SET no_such_column = 1"))

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    await consume_one_fetch(consumer, [receipt_for("mail-1")])

    async with sessions() as session:
        [kept] = (await session.scalars(select(RejectedEvent))).all()
    assert kept.reason == (
        "its handler failed 5 times: OperationalError: no such column: no_such_column"
    )


async def test_a_kept_reason_names_the_database_error_not_its_statement_nor_its_values(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        # A value the table refuses: here a second entry under one id.
        entry = {"event_id": "85073003328", "event_type": "t", "handled_at": utcnow()}
        await session.execute(insert(table_of(InboxEntry)), [entry, entry])

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    await consume_one_fetch(consumer, [receipt_for("mail-1")])

    async with sessions() as session:
        [kept] = (await session.scalars(select(RejectedEvent))).all()
    assert kept.reason == (
        "its handler failed 5 times: IntegrityError: UNIQUE constraint failed: inbox.event_id"
    )


async def test_a_kept_event_is_replayed_once_its_cause_is_fixed(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed = False

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        if not fixed:
            raise ValueError("a value the register refuses")

    monkeypatch.setattr(kernel.consumer, "RETRY_PAUSE_SECONDS", 0)
    consumer = EventConsumer(
        component="test", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    event = receipt_for("mail-1")
    await consume_one_fetch(consumer, [event])
    async with sessions() as session:
        [kept] = (await session.scalars(select(RejectedEvent))).all()

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        app.state.sessions, app.state.relay, app.state.consumer = sessions, None, consumer
        app.state.tenants = {
            code: Tenant(code, code, tmp_path / f"{code}.yaml", {}) for code in (TENANT, "62063")
        }
        return []

    settings = HubSettings(var_dir=tmp_path / "var")
    app = create_app("test", settings, title="test", description="replays", startup=startup)
    app.include_router(rejected_events_router("test:read", "test:write"))

    def as_operator(tenant: str, *scopes: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(settings, tenant, list(scopes))}"}

    replay = f"/v1/rejected-events/{kept.id}/replay"
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        assert (
            await client.post(replay, headers=as_operator(TENANT, "test:read"))
        ).status_code == 403
        assert (
            await client.post(replay, headers=as_operator("62063", "test:write"))
        ).status_code == 404

        again = await client.post(replay, headers=as_operator(TENANT, "test:write"))
        assert again.status_code == 409, again.text
        assert again.json()["detail"] == "ValueError: a value the register refuses"
        assert await inbox_ids(sessions) == set()  # still kept, not handled

        fixed = True  # the service was upgraded
        done = await client.post(replay, headers=as_operator(TENANT, "test:write"))
        assert done.status_code == 200, done.text
        assert done.json() == {"event_id": event.id, "outcome": "handled"}
        assert await inbox_ids(sessions) == {event.id}
        listed = await client.get("/v1/rejected-events", headers=as_operator(TENANT, "test:read"))
        assert listed.json()["items"] == []
        gone = await client.post(replay, headers=as_operator(TENANT, "test:write"))
        assert gone.status_code == 404
