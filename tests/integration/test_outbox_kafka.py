"""The outbox relay against the real broker, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from contracts.envelope import from_record, headers_as_text, new_event
from contracts.events.gateway import DeliveryReceipt
from kernel.database import create_engine, session_factory
from kernel.kafka import make_producer
from kernel.migrations import Migration, create_tables, migrate
from kernel.outbox import OutboxMessage, OutboxRelay, stage, transaction

pytestmark = pytest.mark.integration
MIGRATIONS = [Migration(1, "outbox", create_tables(OutboxMessage.__table__))]  # type: ignore[arg-type]


async def test_relay_publishes_committed_events_in_order_per_key(
    database: tuple[str, str | None], kafka_bootstrap: str
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    assert await migrate(engine, "outbox-test", MIGRATIONS, schema=schema) == 1
    assert await migrate(engine, "outbox-test", MIGRATIONS, schema=schema) == 1  # idempotent
    sessions = session_factory(engine)
    producer = make_producer(kafka_bootstrap, "outbox-test")
    await producer.start()
    relay = OutboxRelay(sessions, producer, component="outbox-test")
    document = f"doc-{uuid.uuid4().hex[:8]}"
    try:
        for attempts in range(1, 21):
            async with transaction(sessions, relay) as session:
                data = DeliveryReceipt(
                    source_event_id="e",
                    source_event_type="t",
                    route="r",
                    connector="c",
                    idempotency_key="e:r",
                    outcome="delivered",
                    attempts=attempts,
                )
                stage(session, new_event(data, tenant="92137", subject=document, source="urn:test"))
        assert await relay.publish_pending() == 20
    finally:
        await producer.stop()
        await engine.dispose()

    consumer = AIOKafkaConsumer(
        "gateway.receipts",
        bootstrap_servers=kafka_bootstrap,
        group_id=f"t-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[int] = []
    try:
        while len(seen) < 20:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "the relay's events did not reach Kafka"
            for records in batch.values():
                for record in records:
                    if record.key == f"92137:{document}".encode():
                        event = from_record(headers_as_text(record.headers), record.value or b"")
                        seen.append(event.data_as(DeliveryReceipt).attempts)
    finally:
        await consumer.stop()
    assert seen == list(range(1, 21))
