"""The delivery engine with a fake connector and an embedded SQLite delivery log."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from aiokafka.errors import IllegalStateError
from aiokafka.structs import TopicPartition
from sqlalchemy import event as orm_events
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from contracts.envelope import (
    CloudEvent,
    EnvelopeError,
    from_record,
    headers_as_text,
    new_event,
    to_record,
)
from contracts.events.courrier import OutgoingMailSendRequested, Recipient
from contracts.events.gateway import DeliveryReceipt
from gateway import engine as engine_module
from gateway.connectors.base import ATTEMPT_SECONDS, Delivery, DeliveryResult, attempt_deadline
from gateway.deliveries import MIGRATIONS, DeliveryRecord, idempotency_key
from gateway.engine import (
    NO_ROUTE,
    REASON_LENGTH,
    RETRY_BATCH_BYTES,
    STUCK_AFTER_SECONDS,
    DeliveriesStuck,
    DeliveryEngine,
    NoRouteToReplay,
    NotReplayable,
)
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.routing import RetryPolicy, Route, RoutingTable
from kernel.consumer import RejectedEvent
from kernel.kafka import FETCH_MAX_WAIT_MS, FetchPacing, OffsetCommits
from kernel.outbox import OutboxMessage
from kernel.texts import plain_text
from tests.support.clock import Clock
from tests.support.databases import sqlite_sessions
from tests.support.gateway_hub import eventually

TENANT = "92137"
SEND = OutgoingMailSendRequested.TYPE


class FakeConnector:
    """Answers from a script: an exception to raise or a reference to return, per call."""

    type_name = "fake"

    def __init__(self, script: list[Exception | str] | None = None) -> None:
        self.script = list(script or [])
        self.calls: list[Delivery] = []

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        self.calls.append(delivery)
        answer = self.script.pop(0) if self.script else f"msg-{len(self.calls)}"
        if isinstance(answer, Exception):
            raise answer
        return DeliveryResult(external_reference=answer)

    async def aclose(self) -> None:
        return None


def mail_event(mail_id: str = "mail-1", tenant: str = TENANT) -> CloudEvent:
    pdf = b"%PDF-1.4 test"
    data = OutgoingMailSendRequested(
        mail_id=mail_id,
        registration_number="S2026/000001",
        recipient=Recipient(kind="person", identifier="85073003328"),
        subject="Permis",
        body_pdf_base64=base64.b64encode(pdf).decode(),
        body_pdf_md5=hashlib.md5(pdf).hexdigest(),
    )
    return new_event(data, tenant=tenant, subject=mail_id, source="urn:hub:courrier")


def as_record(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    record = to_record(event)
    return headers_as_text(record.headers), record.value


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        yield sessions


def make_engine(
    sessions: async_sessionmaker[AsyncSession],
    connector: FakeConnector,
    clock: Clock,
    max_attempts: int = 3,
) -> DeliveryEngine:
    route = Route(TENANT, "outgoing-mail-ebox", SEND, "ebox", "fake")
    routing = RoutingTable(
        routes={(TENANT, SEND): [route]},
        retry={
            TENANT: RetryPolicy(
                max_attempts=max_attempts, base_delay_seconds=1, max_delay_seconds=4
            )
        },
    )
    return DeliveryEngine(
        sessions=sessions, routing=routing, connectors={(TENANT, "ebox"): connector}, clock=clock
    )


async def deliveries(sessions: async_sessionmaker[AsyncSession]) -> list[DeliveryRecord]:
    async with sessions() as session:
        return list(
            (await session.scalars(select(DeliveryRecord).order_by(DeliveryRecord.id))).all()
        )


async def receipts(sessions: async_sessionmaker[AsyncSession]) -> list[DeliveryReceipt]:
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    return [from_record(row.headers, row.value).data_as(DeliveryReceipt) for row in rows]


async def kept_records(sessions: async_sessionmaker[AsyncSession]) -> list[RejectedEvent]:
    async with sessions() as session:
        return list((await session.scalars(select(RejectedEvent).order_by(RejectedEvent.id))).all())


def with_headers(
    event: CloudEvent, changed: dict[str, str | None], dropped: tuple[str, ...] = ()
) -> tuple[dict[str, str], bytes]:
    """``event``'s record as a producer sent it, some headers changed (None: sent without a
    value, as Kafka allows) or ``dropped``."""
    record = to_record(event)
    raw: list[tuple[str, bytes | None]] = [
        (name, value) for name, value in record.headers if name not in {*changed, *dropped}
    ]
    raw += [(name, None if value is None else value.encode()) for name, value in changed.items()]
    return headers_as_text(raw), record.value


async def test_a_delivered_event_is_recorded_with_a_receipt(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, clock = FakeConnector(["ebox-42"]), Clock()
    event = mail_event()
    await make_engine(sessions, connector, clock).handle_record(
        *as_record(event), "courrier.events"
    )

    assert [call.idempotency_key for call in connector.calls] == [f"{event.id}:outgoing-mail-ebox"]
    [record] = await deliveries(sessions)
    assert (record.status, record.attempts, record.external_reference) == (
        "delivered",
        1,
        "ebox-42",
    )
    [receipt] = await receipts(sessions)
    assert (receipt.outcome, receipt.external_reference, receipt.source_event_id) == (
        "delivered",
        "ebox-42",
        event.id,
    )


async def test_an_event_consumed_twice_is_delivered_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, clock = FakeConnector(), Clock()
    engine = make_engine(sessions, connector, clock)
    headers, value = as_record(mail_event())
    await engine.handle_record(headers, value, "courrier.events")
    await engine.handle_record(headers, value, "courrier.events")
    assert len(connector.calls) == 1
    assert len(await receipts(sessions)) == 1


async def test_transient_errors_retry_with_backoff_then_deliver(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector = FakeConnector([RetryableDeliveryError("HTTP 503"), "ebox-7"])
    clock = Clock()
    engine = make_engine(sessions, connector, clock)
    await engine.handle_record(*as_record(mail_event()), "courrier.events")

    [record] = await deliveries(sessions)
    assert record.status == "retrying" and record.last_error == "HTTP 503"
    assert record.next_attempt_at is not None and record.next_attempt_at > clock.now
    assert await engine.retry_due() == 0  # not yet due
    clock.advance(5)
    assert await engine.retry_due() == 1
    [record] = await deliveries(sessions)
    assert (record.status, record.attempts, record.external_reference) == ("delivered", 2, "ebox-7")
    assert connector.calls[0].idempotency_key == connector.calls[1].idempotency_key
    assert [r.outcome for r in await receipts(sessions)] == ["delivered"]


async def test_exhausted_retries_end_dead_and_can_be_replayed(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector = FakeConnector([RetryableDeliveryError("timeout")] * 3)
    clock = Clock()
    engine = make_engine(sessions, connector, clock, max_attempts=3)
    await engine.handle_record(*as_record(mail_event()), "courrier.events")
    for _ in range(2):
        clock.advance(10)
        await engine.retry_due()
    [record] = await deliveries(sessions)
    assert (record.status, record.attempts) == ("dead", 3)
    [receipt] = await receipts(sessions)
    assert (receipt.outcome, receipt.reason, receipt.attempts) == ("dead", "timeout", 3)

    replayed = await engine.replay_delivery(record.idempotency_key, TENANT)
    assert replayed is not None and replayed.status == "retrying"
    assert await engine.replay_delivery(record.idempotency_key, "62063") is None  # another tenant's
    with pytest.raises(NotReplayable, match="already retrying"):  # a second click: no change
        await engine.replay_delivery(record.idempotency_key, TENANT)
    await engine.retry_due()
    [record] = await deliveries(sessions)
    assert record.status == "delivered"


async def test_permanent_errors_fail_at_once_with_the_reason(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    reason = "the recipient has no digital e-Box"
    connector, clock = FakeConnector([PermanentDeliveryError(reason)]), Clock()
    await make_engine(sessions, connector, clock).handle_record(*as_record(mail_event()), "x")
    [record] = await deliveries(sessions)
    assert (record.status, record.last_error) == ("failed", reason)
    [receipt] = await receipts(sessions)
    assert (receipt.outcome, receipt.reason) == ("failed", reason)


async def test_a_targets_words_are_kept_without_the_characters_postgresql_refuses(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A NUL in an error page failed the outcome's write on PostgreSQL, and the fetch with
    # it, for ever; SQLite stored it.
    connector = FakeConnector([PermanentDeliveryError("HTTP 400: <html>\x00\x01</html>")])
    engine = make_engine(sessions, connector, Clock())
    await engine.handle_record(*as_record(mail_event("mail-1")), "x")
    # A lone surrogate (a JSON answer's "\ud800") no encoder writes: the same, on both.
    connector.script = ["ref\x00-1\ud800"]
    await engine.handle_record(*as_record(mail_event("mail-2")), "x")
    # And megabytes of an error page made a receipt the producer refuses: the fetch failed.
    connector.script = [PermanentDeliveryError("HTTP 500: " + "x" * 9_000_000)]
    await engine.handle_record(*as_record(mail_event("mail-3")), "x")
    failed, delivered, long = await deliveries(sessions)
    assert failed.last_error == "HTTP 400: <html>\ufffd\ufffd</html>"
    assert delivered.external_reference == "ref\ufffd-1\ufffd"
    assert next(receipt.reason for receipt in await receipts(sessions)) == failed.last_error
    assert long.status == "failed" and long.last_error is not None
    assert len(long.last_error) == REASON_LENGTH and long.last_error.endswith("…")


def first_attempt_retried(
    sessions: async_sessionmaker[AsyncSession],
) -> tuple[FakeConnector, Clock, DeliveryEngine]:
    """An engine whose target answers 503 to the first attempt and accepts the others."""
    connector, clock = FakeConnector([RetryableDeliveryError("HTTP 503")]), Clock()
    return connector, clock, make_engine(sessions, connector, clock)


async def test_a_retrying_document_does_not_block_others_but_keeps_its_own_order(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, clock, engine = first_attempt_retried(sessions)
    first, second, other = mail_event("mail-1"), mail_event("mail-1"), mail_event("mail-2")
    for event in (first, second, other):
        await engine.handle_record(*as_record(event), "courrier.events")

    # mail-2 went through at once; mail-1's second event waits behind its first.
    assert [call.event.id for call in connector.calls] == [first.id, other.id]
    clock.advance(5)
    await engine.retry_due()
    await engine.retry_due()
    assert [call.event.id for call in connector.calls] == [first.id, other.id, first.id, second.id]
    assert {r.status for r in await deliveries(sessions)} == {"delivered"}


async def test_records_that_are_not_hub_events_are_skipped(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, clock = FakeConnector(), Clock()
    engine = make_engine(sessions, connector, clock)
    headers, value = as_record(mail_event())
    await engine.handle_record({"ce_id": "x"}, value, "courrier.events")
    await engine.handle_record({**headers, "ce_id": "i" * 65}, value, "courrier.events")
    unrouted = {**headers, "ce_type": "courrier.incoming_mail.registered.v1"}
    await engine.handle_record(unrouted, b"{}", "courrier.events")
    assert connector.calls == [] and await deliveries(sessions) == []


async def test_a_request_no_route_of_its_tenant_takes_fails_at_once_and_is_announced(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A tenant whose file lacks its e-Box route: its mail stayed "sending" for ever.
    connector, clock = FakeConnector(), Clock()
    engine = make_engine(sessions, connector, clock)
    event = mail_event("mail-1", tenant="62063")
    headers, value = as_record(event)
    for _ in range(2):  # read again after a rebalance: recorded once
        await engine.handle_record(headers, value, "courrier.events")
    # Its data broken too: failed all the same, its service told.
    broken = mail_event("mail-2", tenant="62063")
    broken_headers, _ = as_record(broken)
    await engine.handle_record(broken_headers, b"{}", "courrier.events")

    first, second = await deliveries(sessions)
    assert (first.status, first.event_id, first.route) == ("failed", event.id, NO_ROUTE)
    assert first.last_error is not None and "no route of tenant 62063" in first.last_error
    assert (second.status, second.event_id) == ("failed", broken.id)
    assert [(r.outcome, r.source_event_id) for r in await receipts(sessions)] == [
        ("failed", event.id),
        ("failed", broken.id),
    ]
    assert connector.calls == []
    # No target to try again: refused, and left out of the tenant's replays.
    with pytest.raises(NoRouteToReplay):
        await engine.replay_delivery(first.idempotency_key, "62063")
    assert await engine.replay_all("62063", "failed") == 0


async def test_a_routed_event_whose_data_breaks_its_contract_ends_dead_and_is_announced(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A courrier upgraded before the gateway sends a field the gateway does not know yet.
    connector, clock = FakeConnector(), Clock()
    engine = make_engine(sessions, connector, clock)
    event = mail_event()
    headers, value = as_record(event)
    # Its name quoted in the reason, a NUL failed the recording on PostgreSQL, for ever.
    newer = json.dumps({**json.loads(value), "prio\x00rity": "high"}).encode()

    for _ in range(2):  # consumed again after a rebalance: recorded once
        await engine.handle_record(headers, newer, "courrier.events")

    [record] = await deliveries(sessions)
    assert (record.status, record.event_id, record.route) == (
        "dead",
        event.id,
        "outgoing-mail-ebox",
    )
    assert record.last_error is not None and "prio\ufffdrity" in record.last_error
    assert "\x00" not in record.last_error  # the key's NUL, which PostgreSQL refuses
    [receipt] = await receipts(sessions)
    assert (receipt.outcome, receipt.source_event_id) == ("dead", event.id)
    assert receipt.reason == record.last_error
    assert connector.calls == []


@pytest.mark.parametrize(
    ("changed", "dropped", "kept_per_reading"),
    [
        ({"ce_time": "2026-03-02T10:00:00"}, (), 1),  # without its UTC offset
        ({"ce_subject": "m" * 201}, (), 1),
        ({"ce_subject": "mail\x07"}, (), 1),  # a control character
        ({"ce_tenant": "9213"}, (), 1),  # no route can be told from it
        ({"ce_source": None}, (), 1),  # a header without a value
        ({}, ("ce_id",), 2),  # nothing tells one reading from another record
        # A tenant the gateway does not serve: shown to the hub's operators, not to no one.
        ({"ce_tenant": "57081", "ce_time": "2026-03-02T10:00:00"}, (), 1),
    ],
    ids=[
        "time",
        "long-subject",
        "control-character",
        "tenant",
        "null-header",
        "no-id",
        "unserved-tenant",
    ],
)
async def test_a_routed_record_whose_envelope_is_broken_is_kept_for_an_operator(
    sessions: async_sessionmaker[AsyncSession],
    changed: dict[str, str | None],
    dropped: tuple[str, ...],
    kept_per_reading: int,
) -> None:
    # Skipped, it was lost once its offset was committed, and its service waited for a
    # receipt for ever.
    connector, clock = FakeConnector(), Clock()
    engine = make_engine(sessions, connector, clock)
    event = mail_event()
    headers, value = with_headers(event, changed, dropped)
    with pytest.raises(EnvelopeError) as broken:
        from_record(headers, value)

    for _ in range(2):  # consumed again after a rebalance
        await engine.handle_records([(headers, value, "courrier.events")])

    kept = await kept_records(sessions)
    assert len(kept) == kept_per_reading
    assert {(row.event_id, row.event_type, row.tenant, row.topic, row.reason) for row in kept} == {
        (
            None if dropped else event.id,
            SEND,
            None if "ce_tenant" in changed else TENANT,
            "courrier.events",
            plain_text(str(broken.value)),
        )
    }
    assert (kept[0].headers, kept[0].value) == (headers, value)
    assert connector.calls == [] and await deliveries(sessions) == []
    assert await receipts(sessions) == []


async def test_a_broken_record_of_a_type_no_route_takes_is_left_to_the_services(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    engine = make_engine(sessions, FakeConnector(), Clock())
    routed, unrouted = mail_event("mail-1"), mail_event("mail-2")
    broken = {"ce_time": "2026-03-02T10:00:00"}
    await engine.handle_records(
        [
            (*with_headers(routed, broken), "courrier.events"),
            # The services that consume it keep it.
            (
                *with_headers(unrouted, {**broken, "ce_type": "courrier.mail.sent.v1"}),
                "courrier.events",
            ),
        ]
    )
    assert [row.event_id for row in await kept_records(sessions)] == [routed.id]


async def test_a_record_kept_meanwhile_by_another_member_is_kept_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock()
    delivered, theirs, ours = mail_event("mail-1"), mail_event("mail-2"), mail_event("mail-3")
    broken = {"ce_time": "2026-03-02T10:00:00"}

    class RebalancedConnector(FakeConnector):
        async def deliver(self, delivery: Delivery) -> DeliveryResult:
            # Another gateway, which owned the partition a moment ago, keeps one now.
            async with sessions() as session, session.begin():
                session.add(
                    RejectedEvent(
                        event_id=theirs.id,
                        event_type=SEND,
                        tenant=TENANT,
                        topic="courrier.events",
                        headers={},
                        value=b"",
                        reason="theirs",
                        received_at=clock(),
                    )
                )
            return await super().deliver(delivery)

    engine = make_engine(sessions, RebalancedConnector(), clock)
    await engine.handle_records(
        [
            (*as_record(delivered), "courrier.events"),
            (*with_headers(theirs, broken), "courrier.events"),
            (*with_headers(ours, broken), "courrier.events"),
        ]
    )

    kept = {row.event_id: row.reason for row in await kept_records(sessions)}
    assert kept.keys() == {theirs.id, ours.id} and kept[theirs.id] == "theirs"
    assert [(r.event_id, r.status) for r in await deliveries(sessions)] == [
        (delivered.id, "delivered")
    ]


async def correct_kept_time(
    sessions: async_sessionmaker[AsyncSession], kept_id: int, event: CloudEvent
) -> RejectedEvent:
    """An operator puts the sender's corrected time in a kept record's headers."""
    async with sessions() as session, session.begin():
        kept = await session.get_one(RejectedEvent, kept_id)
        kept.headers = {**kept.headers, "ce_time": event.time.isoformat()}
    async with sessions() as session:
        return await session.get_one(RejectedEvent, kept_id)


async def test_a_kept_record_is_replayed_through_its_routes_once_its_envelope_is_corrected(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, clock = FakeConnector(["ebox-9"]), Clock()
    engine = make_engine(sessions, connector, clock)
    event = mail_event()
    headers, value = with_headers(event, {"ce_time": "2026-03-02T10:00:00"})
    await engine.handle_records([(headers, value, "courrier.events")])
    [kept] = await kept_records(sessions)

    with pytest.raises(EnvelopeError, match="ce_time"):
        await engine.replay(kept)  # broken still: kept, nothing attempted
    assert [row.id for row in await kept_records(sessions)] == [kept.id]
    assert connector.calls == []

    assert await engine.replay(await correct_kept_time(sessions, kept.id, event)) == "handled"
    assert [call.event.id for call in connector.calls] == [event.id]
    [record] = await deliveries(sessions)
    assert (record.event_id, record.status, record.external_reference) == (
        event.id,
        "delivered",
        "ebox-9",
    )
    assert [receipt.outcome for receipt in await receipts(sessions)] == ["delivered"]
    assert await kept_records(sessions) == []


async def test_a_kept_record_whose_event_was_delivered_meanwhile_is_not_delivered_twice(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, clock = FakeConnector(), Clock()
    engine = make_engine(sessions, connector, clock)
    event = mail_event()
    await engine.handle_records(
        [(*with_headers(event, {"ce_time": "2026-03-02T10:00:00"}), "courrier.events")]
    )
    [kept] = await kept_records(sessions)
    await engine.handle_records([(*as_record(event), "courrier.events")])  # sent again, right

    assert await engine.replay(await correct_kept_time(sessions, kept.id, event)) == "duplicate"
    assert len(connector.calls) == 1 and len(await receipts(sessions)) == 1
    assert await kept_records(sessions) == []


async def test_a_kept_record_of_a_tenant_without_its_route_is_failed_when_replayed(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, clock = FakeConnector(), Clock()
    engine = make_engine(sessions, connector, clock)
    event = mail_event(tenant="62063")  # its tenant's file has no e-Box route
    await engine.handle_records(
        [(*with_headers(event, {"ce_time": "2026-03-02T10:00:00"}), "courrier.events")]
    )
    [kept] = await kept_records(sessions)

    # Its service is told it failed: handled, not "ignored" as if nothing was done.
    assert await engine.replay(await correct_kept_time(sessions, kept.id, event)) == "handled"
    [record] = await deliveries(sessions)
    assert (record.event_id, record.status, record.route) == (event.id, "failed", NO_ROUTE)
    assert [receipt.outcome for receipt in await receipts(sessions)] == ["failed"]


async def test_one_fetch_is_recorded_together_keeping_each_documents_order(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, _, engine = first_attempt_retried(sessions)
    first, second, other = mail_event("mail-1"), mail_event("mail-1"), mail_event("mail-2")
    fetch = [(*as_record(e), "courrier.events") for e in (first, second, other, first)]

    await engine.handle_records(fetch)

    # mail-1's first delivery is retried; its second waits behind it, not attempted;
    # mail-2 is delivered; the record fetched twice is attempted and recorded once.
    assert sorted(call.event.id for call in connector.calls) == sorted([first.id, other.id])
    recorded = {r.event_id: (r.status, r.attempts) for r in await deliveries(sessions)}
    assert recorded == {
        first.id: ("retrying", 1),
        second.id: ("retrying", 0),
        other.id: ("delivered", 1),
    }
    assert [r.source_event_id for r in await receipts(sessions)] == [other.id]

    # Fetched again after a crash (offsets not committed): nothing is attempted twice.
    await engine.handle_records(fetch)
    assert len(connector.calls) == 2 and len(await deliveries(sessions)) == 3


async def test_a_delivery_recorded_meanwhile_by_another_member_keeps_its_first_record(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock()
    events = [mail_event("mail-1"), mail_event("mail-2")]
    theirs = idempotency_key(events[0].id, "outgoing-mail-ebox")

    class RebalancedConnector(FakeConnector):
        async def deliver(self, delivery: Delivery) -> DeliveryResult:
            if delivery.idempotency_key == theirs:
                # Another gateway, which owned the partition a moment ago, records it now.
                async with sessions() as session, session.begin():
                    session.add(
                        DeliveryRecord(
                            idempotency_key=theirs,
                            event_id=events[0].id,
                            event_type=SEND,
                            event_time=events[0].time,
                            tenant=TENANT,
                            subject="mail-1",
                            route="outgoing-mail-ebox",
                            connector="fake",
                            status="delivered",
                            attempts=1,
                            external_reference="theirs",
                            record_headers={},
                            record_value=b"",
                            created_at=clock(),
                            updated_at=clock(),
                        )
                    )
            return await super().deliver(delivery)

    engine = make_engine(sessions, RebalancedConnector(), clock)
    await engine.handle_records([(*as_record(e), "courrier.events") for e in events])

    recorded = {r.subject: r.external_reference for r in await deliveries(sessions)}
    assert recorded["mail-1"] == "theirs" and recorded["mail-2"] is not None
    assert [r.subject for r in await deliveries(sessions)] == ["mail-1", "mail-2"]
    assert len(await receipts(sessions)) == 1  # theirs announced its own receipt


async def test_a_stored_event_that_can_no_longer_be_read_ends_dead_and_is_announced(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, clock = FakeConnector([RetryableDeliveryError("HTTP 503")]), Clock()
    engine = make_engine(sessions, connector, clock)
    event = mail_event()
    await engine.handle_record(*as_record(event), "courrier.events")
    async with sessions() as session, session.begin():
        [record] = (await session.scalars(select(DeliveryRecord))).all()
        record.record_value = b'{"mail_id": 3}'  # the contract changed under the stored event

    clock.advance(5)
    assert await engine.retry_due() == 1
    [record] = await deliveries(sessions)
    assert (record.status, record.attempts) == ("dead", 2)
    assert record.last_error is not None and record.last_error.startswith("unreadable event")
    [receipt] = await receipts(sessions)
    assert (receipt.outcome, receipt.source_event_id, receipt.attempts) == ("dead", event.id, 2)
    assert receipt.reason == record.last_error
    assert len(connector.calls) == 1  # not attempted with an event it cannot read


async def test_a_target_reference_too_long_to_be_kept_is_cut_in_the_log_and_the_receipt(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    reference = "ref-" + "x" * 400  # a vendor's whole answer, say
    connector, clock = FakeConnector([reference]), Clock()
    await make_engine(sessions, connector, clock).handle_record(
        *as_record(mail_event()), "courrier.events"
    )
    [record] = await deliveries(sessions)
    assert record.status == "delivered"
    # It fits the log's column, and the services' (PostgreSQL refused it otherwise).
    assert record.external_reference == reference[:199] + "…"
    [receipt] = await receipts(sessions)
    assert receipt.external_reference == record.external_reference


async def test_a_retry_pass_holds_the_stored_events_that_fit_in_its_bytes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector = FakeConnector([RetryableDeliveryError("HTTP 503")] * 3)
    clock = Clock()
    engine = make_engine(sessions, connector, clock)
    events = [mail_event(f"mail-{n}") for n in (1, 2, 3)]
    for event in events:  # the e-Box was away: all three wait for their retry
        await engine.handle_record(*as_record(event), "courrier.events")
        clock.advance(0.1)
    size = len(as_record(events[0])[1])

    clock.advance(5)
    assert await engine.retry_due(batch_bytes=size * 3 // 2) == 2  # the second starts within
    assert await engine.retry_due(batch_bytes=1) == 1  # larger than the budget: alone
    assert sorted(call.event.id for call in connector.calls[3:]) == sorted(e.id for e in events)
    assert {r.status for r in await deliveries(sessions)} == {"delivered"}


class RevokedDuringTheBatch:
    """A Kafka consumer whose fetch spans two partitions, one revoked while it was handled."""

    def __init__(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        self.fetched = fetched
        self.owned = {min(fetched, key=lambda p: p.partition)}  # the other went to a new member
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        return self.fetched

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition not in self.owned:
            raise IllegalStateError(f"No current assignment for partition {partition}")
        self.seeks.append((partition, offset))


async def test_a_failed_batch_rewinds_only_the_partitions_still_owned(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(sessions, FakeConnector(), Clock())

    async def database_away(records: object) -> None:
        raise ConnectionError("the delivery log is away")

    async def no_pause(seconds: float) -> None:
        return None

    monkeypatch.setattr(engine, "handle_records", database_away)
    monkeypatch.setattr(asyncio, "sleep", no_pause)
    headers, value = as_record(mail_event())
    record = [(name, text.encode()) for name, text in headers.items()]
    first, second = (TopicPartition("courrier.events", n) for n in (0, 1))
    consumer = RevokedDuringTheBatch(
        {
            first: [SimpleNamespace(headers=record, value=value, offset=7)],
            second: [SimpleNamespace(headers=record, value=value, offset=30)],
        }
    )
    commits = OffsetCommits(consumer, "gateway")
    pacing = FetchPacing(consumer, FETCH_MAX_WAIT_MS)

    assert await engine.consume_batch(consumer, commits, pacing) == 0
    # The owned partition comes again from the batch's first offset; the revoked one is
    # its new member's (aiokafka raises on a seek there, which stopped the consumer job).
    assert consumer.seeks == [(first, 7)]


async def test_healthz_says_when_the_fetches_keep_failing_to_be_recorded(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(sessions, FakeConnector(), Clock())
    handle_records = engine.handle_records

    async def refused(records: object) -> None:
        raise ValueError("a value the delivery log refuses")

    async def no_pause(seconds: float) -> None:
        return None

    monotonic = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: monotonic[0])
    monkeypatch.setattr(asyncio, "sleep", no_pause)
    monkeypatch.setattr(engine, "handle_records", refused)
    headers, value = as_record(mail_event())
    record = [(name, text.encode()) for name, text in headers.items()]
    partition = TopicPartition("courrier.events", 0)
    consumer = RevokedDuringTheBatch(
        {partition: [SimpleNamespace(headers=record, value=value, offset=7)]}
    )
    commits = OffsetCommits(consumer, "gateway")
    pacing = FetchPacing(consumer, FETCH_MAX_WAIT_MS)

    await engine.consume_batch(consumer, commits, pacing)
    await engine.check_recording()  # failing for a moment: a database restarting
    monotonic[0] += STUCK_AFTER_SECONDS
    await engine.consume_batch(consumer, commits, pacing)
    with pytest.raises(DeliveriesStuck, match="a value the delivery log refuses"):
        await engine.check_recording()
    monkeypatch.setattr(engine, "handle_records", handle_records)

    async def committed(batches: object) -> None:
        return None

    monkeypatch.setattr(commits, "commit", committed)
    assert await engine.consume_batch(consumer, commits, pacing) == 1  # recorded at last
    await engine.check_recording()


async def test_an_attempt_past_its_deadline_is_cut_and_retried(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    class TricklingConnector(FakeConnector):
        """A target that keeps the connection alive a byte at a time: no read times out."""

        attempt_seconds = 0.05

        async def deliver(self, delivery: Delivery) -> DeliveryResult:
            self.calls.append(delivery)
            await asyncio.sleep(30)
            return DeliveryResult(external_reference="never")

    connector, clock = TricklingConnector(), Clock()
    engine = make_engine(sessions, connector, clock)

    await asyncio.wait_for(engine.handle_record(*as_record(mail_event()), "x"), timeout=5)

    [record] = await deliveries(sessions)
    assert (record.status, record.last_error) == ("retrying", "fake: no answer within 0.05 s")


async def test_a_target_asking_to_wait_is_retried_no_sooner(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    busy = RetryableDeliveryError("HTTP 503: maintenance", retry_after_seconds=3600)
    connector, clock = FakeConnector([busy]), Clock()
    engine = make_engine(sessions, connector, clock)
    await engine.handle_record(*as_record(mail_event()), "x")

    [record] = await deliveries(sessions)
    assert record.next_attempt_at is not None
    assert record.next_attempt_at - clock.now == timedelta(seconds=3600)  # not the 1 s backoff
    clock.advance(1800)
    assert await engine.retry_due() == 0


async def test_a_delivery_whose_route_was_removed_waits_for_it_then_ends_dead(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, clock = FakeConnector([RetryableDeliveryError("HTTP 503")]), Clock()
    engine = make_engine(sessions, connector, clock, max_attempts=3)
    await engine.handle_record(*as_record(mail_event()), "x")
    await engine.handle_record(*as_record(mail_event()), "x")  # the same mail's next event
    engine._routing.routes.clear()  # the tenant file was edited and the gateway restarted

    for minutes in (0, 5, 100):  # it may come back: waited for two hours, not attempted
        clock.advance(minutes * 60 + 5)
        assert await engine.retry_due() == 1
        first, waiting = await deliveries(sessions)
        assert (first.status, first.attempts) == ("retrying", 1)
        assert (waiting.status, waiting.attempts) == ("retrying", 0)  # behind it, unattempted
    clock.advance(20 * 60)  # two hours since it was found gone
    assert await engine.retry_due() == 1

    # Dead, with the one waiting behind it (it would have waited two hours more).
    assert [(r.status, r.attempts) for r in await deliveries(sessions)] == [("dead", 1)] * 2
    announced = await receipts(sessions)
    assert [r.outcome for r in announced] == ["dead", "dead"]
    assert all("no longer configured" in (r.reason or "") for r in announced)
    assert len(connector.calls) == 1


async def test_every_dead_delivery_of_a_tenant_is_replayed_at_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # The target was down past every attempt; it is back.
    down = [RetryableDeliveryError("HTTP 503")] * 2
    connector, clock = FakeConnector(down * 2), Clock()
    engine = make_engine(sessions, connector, clock, max_attempts=1)
    for mail in ("mail-1", "mail-2"):
        await engine.handle_record(*as_record(mail_event(mail)), "x")
    assert [r.status for r in await deliveries(sessions)] == ["dead", "dead"]

    assert await engine.replay_all("62063", "dead") == 0  # another tenant's: none
    assert await engine.replay_all(TENANT, "dead", route="another-route") == 0
    assert await engine.replay_all(TENANT, "dead", route="outgoing-mail-ebox") == 2
    connector.script.clear()
    await engine.retry_due()

    assert [(r.status, r.attempts) for r in await deliveries(sessions)] == [("delivered", 1)] * 2


async def test_a_retry_another_scheduler_claimed_meanwhile_is_left_to_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    connector, clock = FakeConnector([RetryableDeliveryError("HTTP 503")]), Clock()
    engine = make_engine(sessions, connector, clock)
    await engine.handle_record(*as_record(mail_event()), "x")
    clock.advance(5)

    class Slots(asyncio.Semaphore):
        asked = asyncio.Event()

        async def acquire(self) -> Literal[True]:
            if self.locked():  # one that will wait for a slot
                self.asked.set()
            return await super().acquire()

    engine._target_slots[(TENANT, "ebox")] = slots = Slots(1)
    async with slots:  # every slot busy: the claimed retry waits for one
        waiting = asyncio.create_task(engine.retry_due())
        await slots.asked.wait()
        assert await claimed(sessions, clock)
        # Its claim ran out while it waited, and another gateway claimed the retry.
        async with sessions() as session, session.begin():
            [record] = (await session.scalars(select(DeliveryRecord))).all()
            record.next_attempt_at = clock.now + timedelta(minutes=7)
    assert await waiting == 1

    assert len(connector.calls) == 1  # the first attempt only: the other gateway attempts it
    [record] = await deliveries(sessions)
    assert (record.status, record.attempts) == ("retrying", 1)


async def claimed(sessions: async_sessionmaker[AsyncSession], clock: Clock) -> bool:
    [record] = await deliveries(sessions)
    return record.next_attempt_at is not None and record.next_attempt_at > clock.now + timedelta(
        seconds=30
    )


def test_a_connector_that_declares_no_deadline_gets_one_from_its_timeout_or_a_default() -> None:
    class Declared:
        attempt_seconds = 12.0

    class Timed:
        settings = SimpleNamespace(timeout_seconds=120.0)  # a plugin of before the deadlines

    assert attempt_deadline(Declared()) == 12.0
    assert attempt_deadline(Timed()) == 245.0
    assert attempt_deadline(FakeConnector()) == ATTEMPT_SECONDS


async def test_a_retry_that_fails_leaves_the_others_of_its_pass_to_go_on(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    down = [RetryableDeliveryError("HTTP 503")] * 2
    connector, clock = FakeConnector(down), Clock()
    engine = make_engine(sessions, connector, clock)
    for mail in ("mail-1", "mail-2"):
        await engine.handle_record(*as_record(mail_event(mail)), "x")
    first, _ = await deliveries(sessions)
    renew = engine._renew_claim

    async def database_away_for_one(record_id: int, *args: Any) -> bool:
        if record_id == first.id:
            raise ConnectionError("the database is away")
        return await renew(record_id, *args)

    monkeypatch.setattr(engine, "_renew_claim", database_away_for_one)
    clock.advance(5)

    assert await engine.retry_due() == 2  # no exception out of the pass

    one, two = await deliveries(sessions)
    assert (one.status, two.status) == ("retrying", "delivered")
    assert one.next_attempt_at is not None and one.next_attempt_at > clock.now  # its claim


OTHER = "62063"


class SilentConnector(FakeConnector):
    """A silent target: it takes each call and answers nothing until ``answer`` is set,
    then accepts (its scripted answers come at once, as a target that was down)."""

    def __init__(self, script: list[Exception | str] | None = None) -> None:
        super().__init__(script)
        self.answer = asyncio.Event()

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        if self.script:  # the scripted answers come at once
            return await super().deliver(delivery)
        self.calls.append(delivery)
        await self.answer.wait()
        return DeliveryResult(external_reference=f"late-{len(self.calls)}")


def targets_engine(
    sessions: async_sessionmaker[AsyncSession],
    targets: dict[str, FakeConnector],
    clock: Clock,
    concurrency: int = 8,
) -> DeliveryEngine:
    """One tenant per target: ``targets`` maps each tenant to its connector."""
    policy = RetryPolicy(max_attempts=5, base_delay_seconds=1, max_delay_seconds=4)
    routing = RoutingTable(
        routes={
            (tenant, SEND): [Route(tenant, "outgoing-mail-ebox", SEND, "ebox", "fake")]
            for tenant in targets
        },
        retry=dict.fromkeys(targets, policy),
    )
    return DeliveryEngine(
        sessions=sessions,
        routing=routing,
        connectors={(tenant, "ebox"): connector for tenant, connector in targets.items()},
        clock=clock,
        concurrency=concurrency,
    )


def two_targets_engine(
    sessions: async_sessionmaker[AsyncSession],
    silent: FakeConnector,
    other: FakeConnector,
    clock: Clock,
    concurrency: int = 8,
) -> DeliveryEngine:
    """Two tenants, each with its target: ``silent`` is TENANT's, ``other`` OTHER's."""
    return targets_engine(sessions, {TENANT: silent, OTHER: other}, clock, concurrency)


def record_of(event: CloudEvent) -> tuple[dict[str, str], bytes, str]:
    return (*as_record(event), "courrier.events")


async def settled(engine: DeliveryEngine) -> None:
    """Wait for the attempts the engine handed over to the background to end."""
    await asyncio.wait_for(asyncio.gather(*engine._background), timeout=5)


async def test_a_silent_target_holds_neither_the_fetch_nor_the_other_targets(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.engine.FIRST_ATTEMPT_SECONDS", 0.05)
    silent, other, clock = SilentConnector(), FakeConnector(), Clock()
    engine = two_targets_engine(sessions, silent, other, clock)
    first, second = mail_event("mail-1"), mail_event("mail-1")  # one mail's two events
    elsewhere = mail_event("mail-9", tenant=OTHER)

    # The fetch is recorded (and its offsets may be committed) without waiting for the
    # silent target; the other tenant's mail is delivered and announced meanwhile.
    await asyncio.wait_for(
        engine.handle_records([record_of(first), record_of(second), record_of(elsewhere)]),
        timeout=2,
    )

    by_event = {record.event_id: record for record in await deliveries(sessions)}
    assert by_event[elsewhere.id].status == "delivered"
    under_way = by_event[first.id]
    assert under_way.status == "retrying" and under_way.attempts == 0
    assert "the attempt goes on" in (under_way.last_error or "")
    assert by_event[second.id].status == "retrying"  # waits behind the first, in order
    assert await engine.retry_due() == 0  # neither is the scheduler's while it goes on
    assert [r.source_event_id for r in await receipts(sessions)] == [elsewhere.id]

    silent.answer.set()  # the target answers at last: the attempt records its outcome
    await settled(engine)
    by_event = {record.event_id: record for record in await deliveries(sessions)}
    assert (by_event[first.id].status, by_event[first.id].attempts) == ("delivered", 1)
    assert by_event[first.id].external_reference == "late-1"
    assert await engine.retry_due() == 1  # now the second goes, after the first
    assert [call.event.id for call in silent.calls] == [first.id, second.id]
    announced = [(r.source_event_id, r.outcome) for r in await receipts(sessions)]
    assert announced == [
        (elsewhere.id, "delivered"),
        (first.id, "delivered"),
        (second.id, "delivered"),
    ]


async def test_a_delivery_waiting_for_its_targets_slot_is_left_to_the_retries(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.engine.FIRST_ATTEMPT_SECONDS", 0.05)
    silent, other, clock = SilentConnector(), FakeConnector(), Clock()
    engine = two_targets_engine(sessions, silent, other, clock, concurrency=1)
    held, queued = mail_event("mail-1"), mail_event("mail-2")

    await asyncio.wait_for(engine.handle_records([record_of(held), record_of(queued)]), 2)

    # The silent target's one slot holds the first; the second never began: it is due at
    # once for the scheduler, unattempted, and the fetch did not wait for it.
    assert [call.event.id for call in silent.calls] == [held.id]
    by_event = {record.event_id: record for record in await deliveries(sessions)}
    assert by_event[queued.id].status == "retrying"
    assert (by_event[queued.id].attempts, by_event[queued.id].next_attempt_at) == (0, clock.now)
    silent.answer.set()
    await settled(engine)
    assert await engine.retry_due() == 1
    assert {r.status for r in await deliveries(sessions)} == {"delivered"}


async def test_the_retries_of_a_silent_target_leave_the_others_to_go_on(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Both targets were down; the other is back, the silent one takes calls and says nothing.
    down = [RetryableDeliveryError("HTTP 503")] * 5
    silent, other = SilentConnector(list(down)), FakeConnector([RetryableDeliveryError("503")])
    clock = Clock()
    engine = two_targets_engine(sessions, silent, other, clock, concurrency=1)
    await engine.handle_records([record_of(mail_event(f"mail-{n}")) for n in range(5)])
    await engine.handle_records([record_of(mail_event("mail-9", tenant=OTHER))])
    clock.advance(5)

    scheduler = asyncio.create_task(engine.run_retries(poll_seconds=0.01))
    try:

        async def other_delivered_and_a_silent_retry_under_way() -> bool:
            statuses = [r.status for r in await deliveries(sessions) if r.tenant == OTHER]
            # (Either may come first: each retry is a task of its own.)
            return statuses == ["delivered"] and len(silent.calls) == 5 + 1

        assert await eventually(other_delivered_and_a_silent_retry_under_way, timeout=5, pause=0.01)
        await asyncio.sleep(0.1)  # ten more passes of the scheduler
        # The silent target's retries: one under way, one queued for its one slot; the
        # other three are not claimed (due still, not held in memory).
        assert len(silent.calls) == 5 + 1
        unclaimed = [
            r
            for r in await deliveries(sessions)
            if r.tenant == TENANT
            and r.next_attempt_at is not None
            and r.next_attempt_at <= clock.now
        ]
        assert len(unclaimed) == 3
    finally:
        scheduler.cancel()
        await engine.stop_background()


async def test_three_silent_targets_leave_a_fourth_its_retries_and_first_attempts(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One shared service down for three tenants (the e-Box): each tenant's target is silent.
    monkeypatch.setattr("gateway.engine.FIRST_ATTEMPT_SECONDS", 0.05)
    down = [RetryableDeliveryError("HTTP 503")] * 2
    silent = {tenant: SilentConnector(list(down)) for tenant in ("11111", "22222", "33333")}
    healthy = FakeConnector([RetryableDeliveryError("HTTP 503")] * 2)
    clock = Clock()
    engine = targets_engine(sessions, {**silent, OTHER: healthy}, clock, concurrency=2)
    for tenant in (*silent, OTHER):
        await engine.handle_records(
            [record_of(mail_event(f"{tenant}-{n}", tenant)) for n in range(2)]
        )
    clock.advance(5)
    scheduler = asyncio.create_task(engine.run_retries(poll_seconds=0.01))
    try:

        async def silent_retries_under_way() -> bool:
            return all(len(connector.calls) == 3 for connector in silent.values())

        assert await eventually(silent_retries_under_way, timeout=5, pause=0.01)
        fresh = mail_event("later", OTHER)
        await asyncio.wait_for(engine.handle_records([record_of(fresh)]), timeout=2)

        async def healthy_delivered() -> bool:
            mine = [r.status for r in await deliveries(sessions) if r.tenant == OTHER]
            return mine == ["delivered"] * 3

        assert await eventually(healthy_delivered, timeout=5, pause=0.01)
        [later] = [r for r in await deliveries(sessions) if r.event_id == fresh.id]
        assert later.attempts == 1  # attempted by its fetch, not left to the retries
    finally:
        scheduler.cancel()
        await engine.stop_background()


async def test_a_target_whose_slots_are_all_held_by_slow_attempts_is_left_to_the_retries(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.engine.FIRST_ATTEMPT_SECONDS", 0.5)
    silent, other, clock = SilentConnector(), FakeConnector(), Clock()
    engine = two_targets_engine(sessions, silent, other, clock, concurrency=1)
    await engine.handle_records([record_of(mail_event("mail-1"))])  # handed over

    # The next fetch does not wait its 0.5 s for a slot that will not come.
    started = asyncio.get_running_loop().time()
    await engine.handle_records([record_of(mail_event("mail-2"))])
    assert asyncio.get_running_loop().time() - started < 0.3
    [_, left] = await deliveries(sessions)
    assert (left.status, left.attempts, left.next_attempt_at) == ("retrying", 0, clock.now)
    silent.answer.set()
    await settled(engine)


def fetch_recording_fails_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next recording of a fetch fails (the database away): the consumer rewinds."""
    recording = engine_module.write_transaction

    def database_away_once(sessions: Any) -> Any:
        monkeypatch.setattr(engine_module, "write_transaction", recording)
        raise ConnectionError("the database is away")

    monkeypatch.setattr(engine_module, "write_transaction", database_away_once)


async def fetch_whose_recording_failed(
    sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
    *events: CloudEvent,
) -> tuple[DeliveryEngine, SilentConnector, Clock]:
    """A fetch of ``events`` to a silent target whose recording failed (the database away)
    while its first attempt goes on: the consumer rewinds and will read it again."""
    monkeypatch.setattr("gateway.engine.FIRST_ATTEMPT_SECONDS", 0.05)
    silent, clock = SilentConnector(), Clock()
    engine = two_targets_engine(sessions, silent, FakeConnector(), clock)
    fetch_recording_fails_once(monkeypatch)
    with pytest.raises(ConnectionError):
        await engine.handle_records([record_of(event) for event in events])
    return engine, silent, clock


async def test_a_fetch_read_again_after_its_recording_failed_leaves_the_attempt_under_way(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = mail_event(), mail_event()  # one mail's two events
    engine, silent, clock = await fetch_whose_recording_failed(sessions, monkeypatch, first, second)
    await engine.handle_records([record_of(first), record_of(second)])  # read again

    assert [call.event.id for call in silent.calls] == [first.id]  # not sent twice at once
    under_way, behind = await deliveries(sessions)  # recorded, in order, by the reading
    assert (under_way.event_id, under_way.status, under_way.attempts) == (first.id, "retrying", 0)
    assert under_way.next_attempt_at is not None and under_way.next_attempt_at > clock.now
    assert (behind.event_id, behind.status) == (second.id, "retrying")
    assert await engine.retry_due() == 0  # the second waits behind the first
    silent.answer.set()
    await settled(engine)
    assert await engine.retry_due() == 1
    assert [(r.status, r.attempts) for r in await deliveries(sessions)] == [("delivered", 1)] * 2
    assert [call.event.id for call in silent.calls] == [first.id, second.id]


async def test_an_attempt_under_way_that_records_itself_keeps_its_place(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    event = mail_event()
    engine, silent, _ = await fetch_whose_recording_failed(sessions, monkeypatch, event)
    silent.answer.set()  # it ends before the fetch is read again
    await settled(engine)

    [record] = await deliveries(sessions)  # recorded by the attempt itself
    assert (record.status, record.attempts, record.external_reference) == ("delivered", 1, "late-1")
    await engine.handle_records([record_of(event)])  # then read again: known, nothing more
    assert len(silent.calls) == 1
    assert [r.outcome for r in await receipts(sessions)] == ["delivered"]


async def test_an_attempt_under_way_stopped_with_the_gateway_is_retried_after_its_claim(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    event = mail_event()
    engine, silent, clock = await fetch_whose_recording_failed(sessions, monkeypatch, event)
    await engine.handle_records([record_of(event)])  # read again; offsets committed
    await engine.stop_background()  # the gateway stops before the target answers

    clock.advance(ATTEMPT_SECONDS + 31)  # its claim ran out
    silent.answer.set()
    assert await engine.retry_due() == 1
    [record] = await deliveries(sessions)
    assert (record.status, record.attempts) == ("delivered", 1)


async def test_a_fetch_cancelled_at_stop_cancels_its_attempts(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    silent, other, clock = SilentConnector(), FakeConnector(), Clock()
    engine = two_targets_engine(sessions, silent, other, clock)
    before = asyncio.all_tasks()
    fetch = asyncio.create_task(engine.handle_records([record_of(mail_event())]))

    async def under_way() -> bool:
        return bool(silent.calls)

    assert await eventually(under_way, timeout=2, pause=0.01)
    fetch.cancel()  # the gateway stops during the fetch's wait
    await asyncio.gather(fetch, return_exceptions=True)

    assert asyncio.all_tasks() - before == {asyncio.current_task()} - before  # none left


async def test_a_claim_that_could_not_be_committed_leaves_nothing_counted(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    connector, clock = FakeConnector([RetryableDeliveryError("HTTP 503")] * 2), Clock()
    # One slot: the scheduler claims two retries of the target at most.
    engine = two_targets_engine(sessions, connector, FakeConnector(), clock, concurrency=1)
    await engine.handle_records([record_of(mail_event(f"mail-{n}")) for n in range(2)])
    clock.advance(5)

    def connection_lost(session: Session) -> None:
        orm_events.remove(Session, "before_commit", connection_lost)
        raise ConnectionError("connection lost at the commit")

    orm_events.listen(Session, "before_commit", connection_lost)
    with pytest.raises(ConnectionError):
        await engine.retry_due()

    assert await engine.retry_due() == 2  # both still due, and the target not "full"
    assert {r.status for r in await deliveries(sessions)} == {"delivered"}


async def test_a_slow_target_whose_slots_its_retries_hold_too_costs_a_fetch_no_wait(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.engine.FIRST_ATTEMPT_SECONDS", 0.5)
    silent = SilentConnector([RetryableDeliveryError("HTTP 503")])
    clock = Clock()
    engine = two_targets_engine(sessions, silent, FakeConnector(), clock, concurrency=2)
    await engine.handle_records([record_of(mail_event("mail-0"))])  # 503: a retry
    clock.advance(5)
    scheduler = asyncio.create_task(engine.run_retries(poll_seconds=0.01))
    try:

        async def retried() -> bool:
            return len(silent.calls) == 2

        assert await eventually(retried, timeout=5, pause=0.01)  # one slot: its retry
        await engine.handle_records([record_of(mail_event("mail-1"))])  # the other: handed over

        started = asyncio.get_running_loop().time()
        await engine.handle_records([record_of(mail_event("mail-2"))])
        assert asyncio.get_running_loop().time() - started < 0.3  # not the 0.5 s again
        [left] = [r for r in await deliveries(sessions) if r.subject == "mail-2"]
        assert (left.status, left.attempts) == ("retrying", 0)
    finally:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)
        await engine.stop_background()


async def test_the_retries_of_a_removed_route_leave_the_others_to_go_on(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    down = [RetryableDeliveryError("HTTP 503")] * 30
    gone, other, clock = FakeConnector(list(down)), FakeConnector(list(down)), Clock()
    engine = two_targets_engine(sessions, gone, other, clock, concurrency=1)
    await engine.handle_records([record_of(mail_event(f"mail-{n}")) for n in range(20)])
    clock.advance(1)
    await engine.handle_records([record_of(mail_event("mail-9", tenant=OTHER))])
    del engine._routing.routes[(TENANT, SEND)]  # TENANT's route removed from its file
    clock.advance(5)
    other.script.clear()

    # Twenty due retries of the removed route come first. A claim takes two of them (its
    # cap, as a target of its own); while they are under way, the next claim leaves that
    # route out and reaches the other tenant's retry behind the eighteen others.
    first = await engine._claim_due(3, RETRY_BATCH_BYTES)
    assert [retry.record.tenant for retry in first] == [TENANT, TENANT]
    under_way = [engine._start_retry(retry) for retry in first]
    second = await engine._claim_due(3, RETRY_BATCH_BYTES)
    assert [retry.record.tenant for retry in second] == [OTHER]
    await asyncio.gather(*under_way, *(engine._start_retry(retry) for retry in second))
    assert [r.status for r in await deliveries(sessions) if r.tenant == OTHER] == ["delivered"]
