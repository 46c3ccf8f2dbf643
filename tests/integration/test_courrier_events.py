"""Courrier and the real broker: its events reach ``courrier.events``, receipts drive its mail.

Each test serves a courrier app with its outbox relay and its receipt
consumer (a fresh consumer group) on the session's broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import select

from contracts.envelope import CloudEvent, from_record, headers_as_text, new_event, to_record
from contracts.events.courrier import (
    OutgoingMailFailed,
    OutgoingMailSendRequested,
    OutgoingMailSent,
)
from contracts.events.gateway import DeliveryReceipt
from kernel.consumer import EventConsumer, InboxEntry
from kernel.kafka import make_producer
from kernel.settings import HubSettings
from services.courrier.receipts import HANDLERS, RECEIPTS_TOPIC
from tests.integration.test_courrier_api import (
    LIEGE,
    SAMBREVILLE,
    Courrier,
    outgoing_body,
    running,
    settings_for,
)
from tests.support.groups import group_at_end

pytestmark = pytest.mark.integration


@pytest.fixture
async def courrier(
    hub_settings: HubSettings,
    tmp_path: Path,
    database: tuple[str, str | None],
    kafka_bootstrap: str,
) -> AsyncIterator[Courrier]:
    settings = settings_for(hub_settings, tmp_path)
    async with running(
        settings,
        database,
        background=True,
        kafka_bootstrap_servers=kafka_bootstrap,
        group_id=await group_at_end(kafka_bootstrap, "courrier-test"),
        # Receipts only: decisions other tests publish on meeting.events would make mails.
        topics=(RECEIPTS_TOPIC,),
    ) as served:
        # Wait until the receipt consumer has joined its group: tests then do not race the
        # join, and stopping the app never cancels a consumer still starting (which aiokafka
        # reports as an unclosed consumer).
        probe = receipt_for(str(uuid.uuid4()), "probe", "delivered")
        await publish(kafka_bootstrap, probe)
        await eventually(lambda: handled(served, probe), "the receipt consumer is up")
        yield served


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


async def records_with_key(bootstrap: str, topic: str, key: bytes) -> list[Any]:
    """Every record of ``topic`` with ``key`` published so far (read to the end, no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata
        numbers = sorted(consumer.partitions_for_topic(topic) or [])
        partitions = [TopicPartition(topic, number) for number in numbers]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(*partitions, timeout_ms=2000)
            for records in batch.values():
                found.extend(record for record in records if record.key == key)
        return found
    finally:
        await consumer.stop()


async def handled(courrier: Courrier, *events: CloudEvent) -> bool:
    async with courrier.app.state.sessions() as session:
        ids = set((await session.scalars(select(InboxEntry.event_id))).all())
    return {event.id for event in events} <= ids


async def publish(bootstrap: str, event: CloudEvent) -> None:
    producer = make_producer(bootstrap, "courrier-test")
    await producer.start()
    try:
        record = to_record(event)
        await producer.send_and_wait(
            record.topic, record.value, key=record.key, headers=record.headers
        )
    finally:
        await producer.stop()


def receipt_for(
    mail_id: str, send_event_id: str, outcome: str, *, tenant: str = SAMBREVILLE, **fields: Any
) -> CloudEvent:
    data = DeliveryReceipt.model_validate(
        {
            "source_event_id": send_event_id,
            "source_event_type": OutgoingMailSendRequested.TYPE,
            "route": "outgoing-mail-ebox",
            "connector": "ebox_soap",
            "idempotency_key": f"{send_event_id}:outgoing-mail-ebox",
            "outcome": outcome,
            "attempts": 1,
            **fields,
        }
    )
    return new_event(data, tenant=tenant, subject=mail_id, source="urn:hub:gateway")


async def sent_mail(courrier: Courrier) -> tuple[str, str]:
    """A new outgoing mail in ``sending``: its id and its send request's event id."""
    response = await courrier.http.post(
        "/v1/outgoing-mails:send", json=outgoing_body(), headers=courrier.auth()
    )
    assert response.status_code == 202, response.text
    mail_id: str = response.json()["id"]
    # Only this mail's row: the consumer may also have made mails from decisions that
    # other tests published on meeting.events for the same tenant.
    [row] = [
        row
        for row in await courrier.outbox()
        if row.event_type.endswith("send_requested.v1") and row.key.endswith(mail_id.encode())
    ]
    return mail_id, row.event_id


async def state_of(courrier: Courrier, mail_id: str) -> dict[str, Any]:
    response = await courrier.http.get(f"/v1/outgoing-mails/{mail_id}", headers=courrier.auth())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_send_request_is_published_once_on_courrier_events_with_its_envelope(
    courrier: Courrier, kafka_bootstrap: str
) -> None:
    mail_id, event_id = await sent_mail(courrier)

    async def relayed() -> bool:
        return all(row.sent_at is not None for row in await courrier.outbox())

    await eventually(relayed, "the relay marks the send request sent")
    [row] = await courrier.outbox()
    key = f"{SAMBREVILLE}:{mail_id}".encode()
    [record] = await records_with_key(kafka_bootstrap, "courrier.events", key)
    headers = headers_as_text(record.headers)
    assert {
        name: headers[name]
        for name in (
            "ce_specversion",
            "ce_id",
            "ce_type",
            "ce_source",
            "ce_subject",
            "ce_tenant",
            "content-type",
        )
    } == {
        "ce_specversion": "1.0",
        "ce_id": event_id,
        "ce_type": OutgoingMailSendRequested.TYPE,
        "ce_source": "urn:hub:courrier",
        "ce_subject": mail_id,
        "ce_tenant": SAMBREVILLE,
        "content-type": "application/json",
    }
    event = from_record(headers, record.value)
    assert event.data_as(OutgoingMailSendRequested).mail_id == mail_id
    assert record.value == row.value


async def test_a_delivered_receipt_on_gateway_receipts_marks_the_mail_sent(
    courrier: Courrier, kafka_bootstrap: str
) -> None:
    mail_id, send_event_id = await sent_mail(courrier)
    await publish(
        kafka_bootstrap,
        receipt_for(mail_id, send_event_id, "delivered", external_reference="EBOX-4711"),
    )

    async def sent() -> bool:
        return (await state_of(courrier, mail_id))["state"] == "sent"

    await eventually(sent, "the receipt marks the mail sent")
    assert (await state_of(courrier, mail_id))["ebox_message_id"] == "EBOX-4711"
    key = f"{SAMBREVILLE}:{mail_id}".encode()

    async def announced() -> bool:
        records = await records_with_key(kafka_bootstrap, "courrier.events", key)
        return [headers_as_text(r.headers)["ce_type"] for r in records] == [
            OutgoingMailSendRequested.TYPE,
            OutgoingMailSent.TYPE,
        ]

    await eventually(announced, "courrier.outgoing_mail.sent.v1 is published after the request")


async def test_foreign_and_unknown_receipts_are_skipped_and_a_failure_is_recorded(
    courrier: Courrier, kafka_bootstrap: str
) -> None:
    mail_id, send_event_id = await sent_mail(courrier)
    foreign = receipt_for(
        mail_id, send_event_id, "delivered", tenant=LIEGE, external_reference="EBOX-1"
    )
    unknown = receipt_for(
        str(uuid.uuid4()), send_event_id, "delivered", external_reference="EBOX-2"
    )
    for event in (foreign, unknown):
        await publish(kafka_bootstrap, event)

    await eventually(lambda: handled(courrier, foreign, unknown), "both receipts are handled")
    assert (await state_of(courrier, mail_id))["state"] == "sending"

    await publish(
        kafka_bootstrap,
        receipt_for(mail_id, send_event_id, "failed", reason="the recipient has no e-Box"),
    )

    async def failed() -> bool:
        return (await state_of(courrier, mail_id))["state"] == "failed"

    await eventually(failed, "the failed receipt marks the mail failed")
    mail = await state_of(courrier, mail_id)
    assert mail["failure_reason"] == "the recipient has no e-Box"
    assert mail["ebox_message_id"] is None
    types = [row.event_type for row in await courrier.outbox()]
    assert types == [OutgoingMailSendRequested.TYPE, OutgoingMailFailed.TYPE]


async def test_receipts_apply_once_and_only_to_the_mails_own_send_request(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None]
) -> None:
    async with running(settings_for(hub_settings, tmp_path), database) as courrier:
        consumer = EventConsumer(
            component="courrier", sessions=courrier.app.state.sessions, handlers=HANDLERS
        )

        async def handle(event: CloudEvent) -> str:
            record = to_record(event)
            return await consumer.handle(
                headers_as_text(record.headers), record.value, record.topic
            )

        mail_id, send_event_id = await sent_mail(courrier)
        stale = receipt_for(mail_id, "another-send", "delivered", external_reference="X")
        assert await handle(stale) == "handled"
        assert (await state_of(courrier, mail_id))["state"] == "sending"

        delivered = receipt_for(mail_id, send_event_id, "delivered", external_reference="E-1")
        assert await handle(delivered) == "handled"
        assert await handle(delivered) == "duplicate"
        late_failure = receipt_for(mail_id, send_event_id, "dead", reason="timeout")
        assert await handle(late_failure) == "handled"
        mail = await state_of(courrier, mail_id)
        assert (mail["state"], mail["ebox_message_id"]) == ("sent", "E-1")
        types = [row.event_type for row in await courrier.outbox()]
        assert types == [OutgoingMailSendRequested.TYPE, OutgoingMailSent.TYPE]


async def test_a_replayed_dead_delivery_moves_a_failed_mail_to_sent(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None]
) -> None:
    async with running(settings_for(hub_settings, tmp_path), database) as courrier:
        consumer = EventConsumer(
            component="courrier", sessions=courrier.app.state.sessions, handlers=HANDLERS
        )
        mail_id, send_event_id = await sent_mail(courrier)
        for event in (
            receipt_for(mail_id, send_event_id, "dead", reason="e-Box unreachable"),
            receipt_for(mail_id, send_event_id, "delivered", external_reference="E-9"),
        ):
            record = to_record(event)
            await consumer.handle(headers_as_text(record.headers), record.value, record.topic)
        mail = await state_of(courrier, mail_id)
        assert (mail["state"], mail["ebox_message_id"], mail["failure_reason"]) == (
            "sent",
            "E-9",
            None,
        )
