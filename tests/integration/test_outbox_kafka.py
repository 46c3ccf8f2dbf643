"""The outbox relay against the real broker, on SQLite and PostgreSQL; its replicas on
PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from contracts.envelope import from_record, headers_as_text, new_event
from contracts.events.gateway import DeliveryReceipt
from kernel.database import create_engine, session_factory, utcnow
from kernel.kafka import (
    MAX_REQUEST_BYTES,
    TOPIC_MAX_MESSAGE_BYTES,
    EmbeddedBroker,
    ensure_topics,
    free_port,
    make_producer,
    wait_for_broker,
)
from kernel.migrations import Migration, create_tables, migrate
from kernel.outbox import RECORD_OVERHEAD_BYTES, OutboxMessage, OutboxRelay, stage, transaction
from tests.integration.test_topic_limits import topic_limit
from tests.support.gateway_hub import events_on
from tests.support.hub_processes import drop_schemas
from tests.unit import test_outbox as unit
from tests.unit.test_outbox import FakeSender, receipt

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


async def test_the_hubs_topics_take_the_largest_event_the_outbox_lets_through(
    kafka_bootstrap: str,
) -> None:
    # Kafka's default max.message.bytes is about 1 MiB: there every event of 1 to 8 MiB
    # (a mail with its PDF) was refused for good, its document's later events behind it.
    topic = f"outbox-test-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: 1})
    assert await topic_limit(kafka_bootstrap, topic) == TOPIC_MAX_MESSAGE_BYTES > MAX_REQUEST_BYTES

    # The embedded broker takes the setting, and a record as large as the outbox lets through.
    producer = make_producer(kafka_bootstrap, "outbox-test")
    await producer.start()
    try:
        value = b"x" * (MAX_REQUEST_BYTES - RECORD_OVERHEAD_BYTES - len(b"doc-1"))
        await (await producer.send(topic, value=value, key=b"doc-1"))
    finally:
        await producer.stop()


class HeldSender(FakeSender):
    """Holds every acknowledgement until the test lets them through."""

    def __init__(self) -> None:
        super().__init__()
        self.release, self.sending = asyncio.Event(), asyncio.Event()

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]:
        acknowledged = await super().send(topic, value, key, headers)
        self.sending.set()
        held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def later() -> None:
            await self.release.wait()
            held.set_result(await acknowledged)

        asyncio.get_running_loop().create_task(later())
        return held


@pytest.mark.postgres
async def test_replicas_relay_one_at_a_time_so_a_key_keeps_its_order(postgres_url: str) -> None:
    schema = "t_" + uuid.uuid4().hex[:12]
    engine = create_engine(postgres_url, schema=schema)
    first, second = HeldSender(), FakeSender()
    publishing: asyncio.Task[int] | None = None
    try:
        await migrate(engine, "outbox-test", MIGRATIONS, schema=schema)
        sessions = session_factory(engine)
        replica_1 = OutboxRelay(sessions, first, component="outbox-replicas")
        replica_2 = OutboxRelay(sessions, second, component="outbox-replicas")
        async with transaction(sessions, None) as session:
            stage(session, receipt("doc-1", attempts=1))

        # Replica 1 publishes the document's first event and waits for the broker...
        publishing = asyncio.create_task(replica_1.publish_pending())
        await asyncio.wait_for(first.sending.wait(), timeout=10)
        async with transaction(sessions, None) as session:
            stage(session, receipt("doc-1", attempts=2))
        # ...meanwhile replica 2 must not publish the second event ahead of the first.
        assert await replica_2.publish_pending() == 0
        assert second.sent == []

        first.release.set()
        assert await publishing == 1
        assert await replica_2.publish_pending() == 1
        assert [b'"attempts":2' in value for _, _, value in second.sent] == [True]
    finally:
        first.release.set()  # replica 1's session is back in the pool before the engine goes
        if publishing is not None:
            await asyncio.gather(publishing, return_exceptions=True)
        await engine.dispose()
        await drop_schemas(postgres_url, [schema])


@pytest.mark.postgres
async def test_a_hub_in_another_schema_of_the_database_relays_meanwhile(postgres_url: str) -> None:
    # Staging and production share the database, each in its schemas (a schema prefix).
    staging_schema, production_schema = ("t_" + uuid.uuid4().hex[:12] for _ in range(2))
    staging = create_engine(postgres_url, schema=staging_schema)
    production = create_engine(postgres_url, schema=production_schema)
    held = HeldSender()
    publishing: asyncio.Task[int] | None = None
    try:
        for engine, schema in ((staging, staging_schema), (production, production_schema)):
            await migrate(engine, "outbox-test", MIGRATIONS, schema=schema)
            async with transaction(session_factory(engine), None) as session:
                stage(session, receipt("doc-1"))
        staging_relay = OutboxRelay(session_factory(staging), held, component="courrier")
        publishing = asyncio.create_task(staging_relay.publish_pending())
        await asyncio.wait_for(held.sending.wait(), timeout=10)  # staging's broker is slow

        sender = FakeSender()
        production_relay = OutboxRelay(session_factory(production), sender, component="courrier")
        assert await production_relay.publish_pending() == 1  # not held by staging's lock
        assert [key for _, key, _ in sender.sent] == [b"92137:doc-1"]
    finally:
        held.release.set()
        if publishing is not None:
            await asyncio.gather(publishing, return_exceptions=True)
        await staging.dispose()
        await production.dispose()
        await drop_schemas(postgres_url, [staging_schema, production_schema])


class _DocumentBase(DeclarativeBase):
    pass


class _Document(_DocumentBase):
    """A service's document, as far as this test needs one."""

    __tablename__ = "document"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int]


@pytest.mark.postgres
async def test_a_documents_events_are_numbered_in_the_order_their_changes_commit(
    postgres_url: str,
) -> None:
    schema = "t_" + uuid.uuid4().hex[:12]
    engine = create_engine(postgres_url, schema=schema)
    first_commit: asyncio.Task[None] | None = None
    try:
        migrations = [
            *MIGRATIONS,
            Migration(2, "documents", create_tables(_Document.__table__)),  # type: ignore[arg-type]
        ]
        await migrate(engine, "outbox-test", migrations, schema=schema)
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            session.add(_Document(id=1, version=0))

        early, late = sessions(), sessions()
        await early.begin()
        (await early.get_one(_Document, 1)).version = 1  # changed, not flushed yet
        stage(early, receipt("doc-1", attempts=1))
        await late.begin()
        (await late.get_one(_Document, 1)).version = 2
        await late.flush()  # the row is late's until it commits
        stage(late, receipt("doc-1", attempts=2))

        first_commit = asyncio.create_task(early.commit())  # waits for the row
        await asyncio.sleep(0.5)
        await late.commit()
        await first_commit
        await early.close()
        await late.close()

        async with sessions() as session:
            rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
        # late committed first: its event is first, as the relay publishes by id.
        assert [b'"attempts":2' in row.value for row in rows] == [True, False]
    finally:
        if first_commit is not None:
            await asyncio.gather(first_commit, return_exceptions=True)
        await engine.dispose()
        await drop_schemas(postgres_url, [schema])


async def test_reading_on_past_a_stuck_key_keeps_each_keys_order(
    database: tuple[str, str | None],
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    try:
        await migrate(engine, "outbox-test", MIGRATIONS, schema=schema)
        await unit.test_reading_on_never_sends_a_keys_event_before_an_earlier_one_committed_late(
            session_factory(engine)
        )
    finally:
        await engine.dispose()


async def _subjects_on(bootstrap: str, *, at_least: int) -> list[str | None]:
    """The subjects of the receipts on the broker, as a new consumer group reads them."""
    events = await events_on(bootstrap, "gateway.receipts", lambda _: True, at_least=at_least)
    return [event.subject for event in events]


async def test_an_embedded_broker_started_again_gets_the_events_it_forgot(
    tmp_path: Path,
) -> None:
    """What ``hub up`` relies on after a Ctrl-C: Tansu keeps its records in memory only, so
    a relay told when the new broker started sends again what it had sent to the old one."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    await migrate(engine, "outbox-test", MIGRATIONS)
    sessions = session_factory(engine)
    broker = EmbeddedBroker(port=free_port())
    try:
        broker.start()
        await wait_for_broker(broker.bootstrap_servers)
        await ensure_topics(broker.bootstrap_servers)
        producer = make_producer(broker.bootstrap_servers, "outbox-test")
        await producer.start()
        try:
            relay = OutboxRelay(sessions, producer, component="outbox-test")
            async with transaction(sessions, relay) as session:
                stage(session, receipt("before-the-restart"))
            assert await relay.publish_pending() == 1
        finally:
            await producer.stop()
        assert await _subjects_on(broker.bootstrap_servers, at_least=1) == ["before-the-restart"]

        broker.stop()
        broker.start()  # the same address, nothing kept
        started_at = utcnow()
        await wait_for_broker(broker.bootstrap_servers)
        await ensure_topics(broker.bootstrap_servers)
        assert await _subjects_on(broker.bootstrap_servers, at_least=0) == []

        producer = make_producer(broker.bootstrap_servers, "outbox-test")
        await producer.start()
        try:
            restarted = OutboxRelay(
                sessions, producer, component="outbox-test", forgetful_broker_since=started_at
            )
            assert await restarted.republish_forgotten(started_at) == 1
            assert await restarted.publish_pending() == 1
            assert await restarted.republish_forgotten(started_at) == 0  # once per broker
        finally:
            await producer.stop()
        assert await _subjects_on(broker.bootstrap_servers, at_least=1) == ["before-the-restart"]
    finally:
        broker.stop()
        await engine.dispose()
