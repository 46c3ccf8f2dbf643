"""The outbox relay with a fake producer, on an embedded SQLite database."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import UnknownTopicOrPartitionError
from prometheus_client import REGISTRY
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import new_event, to_record
from contracts.events.gateway import DeliveryReceipt
from kernel import outbox
from kernel.database import create_engine, session_factory, utcnow, writer_turn
from kernel.kafka import MAX_REQUEST_BYTES
from kernel.migrations import Migration, create_tables, migrate
from kernel.outbox import (
    RECORD_OVERHEAD_BYTES,
    EventTooLarge,
    OutboxMessage,
    OutboxRelay,
    fits_in_a_record,
    stage,
    transaction,
)
from kernel.telemetry import continue_trace, inject_headers
from tests.support.databases import sqlite_sessions
from tests.support.gateway_hub import eventually


class FakeSender:
    """Acknowledges what it is given, except: ``fail_keys``' records fail at the broker,
    ``refuse_keys``' are refused by ``send`` itself (as aiokafka refuses one too large),
    ``missing_topics``' too (as aiokafka does after waiting for a topic the cluster lacks).
    ``tried`` has every record given, ``sent`` those acknowledged."""

    def __init__(self, fail_keys: set[bytes] | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.tried: list[tuple[str, bytes, bytes]] = []
        self.fail_keys = fail_keys or set()
        self.refuse_keys: set[bytes] = set()
        self.missing_topics: set[str] = set()
        #: Which records the broker itself rejects (key, value → rejected), as a cluster
        #: does a record over its message.max.bytes.
        self.broker_rejects: Callable[[bytes, bytes], bool] = lambda key, value: False

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]:
        self.tried.append((topic, key, value))
        if topic in self.missing_topics:
            raise UnknownTopicOrPartitionError()
        if key in self.refuse_keys:
            raise ValueError("record too large")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if key in self.fail_keys:
            future.set_exception(ConnectionError("broker away"))
        elif self.broker_rejects(key, value):
            future.set_exception(ValueError("MessageSizeTooLargeError"))
        else:
            self.sent.append((topic, key, value))
            future.set_result(None)
        return future


def receipt(subject: str, attempts: int = 1) -> Any:
    data = DeliveryReceipt(
        source_event_id="e",
        source_event_type="t",
        route="r",
        connector="c",
        idempotency_key="e:r",
        outcome="delivered",
        attempts=attempts,
    )
    return new_event(data, tenant="92137", subject=subject, source="urn:test")


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    outbox_only = [Migration(1, "outbox", create_tables(OutboxMessage.__table__))]  # type: ignore[arg-type]
    async with sqlite_sessions(tmp_path / "outbox.db", "test", outbox_only) as sessions:
        yield sessions


async def pending(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        rows = await session.scalars(select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))
        return len(rows.all())


async def test_an_event_exists_only_if_its_transaction_committed(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    with pytest.raises(RuntimeError):
        async with transaction(sessions, None) as session:
            stage(session, receipt("doc-1"))
            raise RuntimeError("the document change failed")
    assert await pending(sessions) == 0
    async with transaction(sessions, None) as session:
        stage(session, receipt("doc-2"))
    assert await pending(sessions) == 1


async def test_an_event_the_producer_would_refuse_fails_its_change_instead_of_waiting(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Staged, it would stay pending for good, every later event of its document behind it.
    fitting = receipt("doc-1")
    room = MAX_REQUEST_BYTES - RECORD_OVERHEAD_BYTES - len(to_record(fitting).value)
    too_large = receipt("doc-1").data.model_copy(update={"reason": "x" * room})
    refused = new_event(too_large, tenant="92137", subject="doc-1", source="urn:test")
    assert fits_in_a_record(fitting) and not fits_in_a_record(refused)

    with pytest.raises(EventTooLarge) as raised:
        async with transaction(sessions, None) as session:
            stage(session, fitting)
            stage(session, refused, "Shorten the reason.")
    assert (raised.value.status, raised.value.slug) == (413, "event-too-large")
    assert raised.value.extensions["max_bytes"] == MAX_REQUEST_BYTES
    assert raised.value.detail.endswith("nothing was stored. Shorten the reason.")
    assert await pending(sessions) == 0  # the change and its other events rolled back

    async with transaction(sessions, None) as session:
        stage(session, fitting)
    assert await pending(sessions) == 1


async def test_a_transactions_events_are_written_at_its_commit_in_the_order_staged(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        async with session.begin():
            stage(session, receipt("doc-1"))
            stage(session, receipt("doc-2"))
            assert await pending(sessions) == 0  # nothing is written before the commit
        # The same session, rolled back after staging: its events go with the rollback,
        # and are not written by the session's next commit either.
        async with session.begin():
            stage(session, receipt("doc-3"))
            await session.rollback()
        async with session.begin():
            stage(session, receipt("doc-4"))
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    assert [row.key for row in rows] == [b"92137:doc-1", b"92137:doc-2", b"92137:doc-4"]


async def test_the_relay_publishes_in_order_and_marks_sent(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sender = FakeSender()
    relay = OutboxRelay(sessions, sender, component="test")
    for attempts in (1, 2, 3):
        async with transaction(sessions, relay) as session:
            stage(session, receipt("doc-1", attempts))
    assert await relay.publish_pending() == 3
    assert [key for _, key, _ in sender.sent] == [b"92137:doc-1"] * 3
    assert [
        b'"attempts":%d' % n in value
        for n, (_, _, value) in zip((1, 2, 3), sender.sent, strict=True)
    ] == [True] * 3
    assert await pending(sessions) == 0
    assert await relay.publish_pending() == 0


async def test_a_key_that_failed_stays_pending_while_others_go(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sender = FakeSender(fail_keys={b"92137:doc-1"})
    relay = OutboxRelay(sessions, sender, component="test")
    async with transaction(sessions, relay) as session:
        stage(session, receipt("doc-1"))
        stage(session, receipt("doc-2"))
    assert await relay.publish_pending() == 1
    assert await pending(sessions) == 1
    sender.fail_keys.clear()
    assert await relay.publish_pending() == 1
    assert [key for _, key, _ in sender.sent] == [b"92137:doc-2", b"92137:doc-1"]


async def test_a_record_send_refuses_holds_its_keys_later_events_and_not_the_others(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sender = FakeSender()
    sender.refuse_keys = {b"92137:doc-1"}
    # Tried again at each pass, here and below (the backoff has a test of its own).
    relay = OutboxRelay(sessions, sender, component="test", refused_retry_seconds=0)
    async with transaction(sessions, relay) as session:
        stage(session, receipt("doc-1", attempts=1))
        stage(session, receipt("doc-2"))
        stage(session, receipt("doc-1", attempts=2))
    assert await relay.publish_pending() == 1
    assert [key for _, key, _ in sender.sent] == [b"92137:doc-2"]
    assert await pending(sessions) == 2

    sender.refuse_keys.clear()
    assert await relay.publish_pending() == 2
    sent = [(key, b'"attempts":2' in value) for _, key, value in sender.sent]
    assert sent == [(b"92137:doc-2", False), (b"92137:doc-1", False), (b"92137:doc-1", True)]


async def test_a_later_event_of_a_key_never_leaves_while_an_earlier_one_fails(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sender = FakeSender()
    relay = OutboxRelay(sessions, sender, component="test", refused_retry_seconds=0)
    async with transaction(sessions, relay) as session:
        stage(session, receipt("doc-1", attempts=1))
        stage(session, receipt("doc-2"))
        stage(session, receipt("doc-1", attempts=2))
    # The cluster rejects doc-1's first event (over its message.max.bytes, say).
    sender.broker_rejects = lambda key, value: key == b"92137:doc-1" and b'"attempts":1' in value

    for _ in range(3):  # each pass finds the same rows pending
        await relay.publish_pending()
    # doc-1's second event waited behind its first: sent, it would have been written
    # before it, and again at each pass (it was never marked sent).
    assert [key for _, key, _ in sender.sent] == [b"92137:doc-2"]
    assert await pending(sessions) == 2

    sender.broker_rejects = lambda key, value: False  # the cluster's limit raised
    assert await relay.publish_pending() == 2
    sent = [(key, b'"attempts":2' in value) for _, key, value in sender.sent]
    assert sent == [(b"92137:doc-2", False), (b"92137:doc-1", False), (b"92137:doc-1", True)]


async def test_on_sqlite_a_process_writers_take_turns(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    await migrate(engine, "test", [Migration(1, "outbox", create_tables(OutboxMessage.__table__))])  # type: ignore[arg-type]
    sessions = session_factory(engine)
    steps: list[str] = []

    async def write(name: str, rolls_back: bool = False) -> None:
        try:
            async with transaction(sessions, None) as session:
                steps.append(f"{name} begins")
                stage(session, receipt(name))
                await session.flush()
                await asyncio.sleep(0.05)
                steps.append(f"{name} ends")
                if rolls_back:
                    raise LookupError("undone")
        except LookupError:
            pass

    try:
        await asyncio.gather(write("first", rolls_back=True), write("second"), write("third"))
        assert await pending(sessions) == 2
    finally:
        await engine.dispose()
    # One transaction after the other; a rolled-back one gives its turn back too.
    assert steps == [
        "first begins",
        "first ends",
        "second begins",
        "second ends",
        "third begins",
        "third ends",
    ]


async def test_a_transaction_gives_up_the_writers_turn_before_its_session_closes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Closing an AsyncSession waits for a turn of the event loop; inside the writers'
    # turn, that wait kept every other writer waiting too.
    order: list[str] = []

    class NotingSession(AsyncSession):
        async def close(self) -> None:
            order.append("first session closes")
            await super().close()

    noting = async_sessionmaker(sessions.kw["bind"], class_=NotingSession)

    async def next_writer() -> None:
        async with writer_turn(noting):
            order.append("next writer has the turn")

    async with transaction(noting, None) as session:
        stage(session, receipt("doc-1"))
        waiting = asyncio.create_task(next_writer())
        await asyncio.sleep(0)  # now waiting for the turn
        assert order == []
    await waiting
    assert order == ["next writer has the turn", "first session closes"]
    assert await pending(sessions) == 1


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"component": "backlog-test"})


async def test_the_backlog_gauges_say_how_many_events_wait_and_since_when(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sender = FakeSender(fail_keys={b"92137:doc-1"})  # the broker refuses doc-1's events
    relay = OutboxRelay(sessions, sender, component="backlog-test")
    async with transaction(sessions, relay) as session:
        stage(session, receipt("doc-1"))
        stage(session, receipt("doc-1", attempts=2))
        stage(session, receipt("doc-2"))
    async with sessions() as session, session.begin():  # staged two minutes ago
        await session.execute(
            update(OutboxMessage).values(created_at=utcnow() - timedelta(minutes=2))
        )
    await relay.publish_pending()

    await relay.report_backlog()
    assert gauge("hub_outbox_pending_events") == 2
    assert 120 <= (gauge("hub_outbox_oldest_pending_seconds") or 0) < 180

    sender.fail_keys.clear()
    await relay.publish_pending()
    await relay.report_backlog()
    assert gauge("hub_outbox_pending_events") == 0
    assert gauge("hub_outbox_oldest_pending_seconds") == 0


async def test_a_batch_holds_as_many_events_as_fit_in_its_bytes_and_the_rest_follow_at_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(sessions, None) as session:
        for number in range(5):
            stage(session, receipt(f"doc-{number}"))
    async with sessions() as session:
        size = max(len(v) for v in (await session.scalars(select(OutboxMessage.value))).all())

    sender = FakeSender()
    # Room for two events and a half: the third starts within the budget, the fourth not.
    relay = OutboxRelay(sessions, sender, component="test", batch_bytes=size * 5 // 2)
    assert await relay.publish_pending() == 3
    assert await pending(sessions) == 2

    # One larger than the whole budget still goes, alone.
    alone = OutboxRelay(sessions, sender, component="test", batch_bytes=1)
    assert await alone.publish_pending() == 1

    # The relay's loop takes the next batch at once, not at its next poll.
    relay_loop = OutboxRelay(
        sessions, sender, component="test", batch_bytes=1, idle_poll_seconds=60
    )
    async with transaction(sessions, None) as session:
        for number in range(5, 8):
            stage(session, receipt(f"doc-{number}"))

    async def drained() -> bool:
        return await pending(sessions) == 0

    task = asyncio.create_task(relay_loop.run())
    try:
        assert await eventually(drained, timeout=5, pause=0.01)
    finally:
        task.cancel()
    assert [key for _, key, _ in sender.sent] == [b"92137:doc-%d" % n for n in range(8)]


async def test_keys_the_cluster_refuses_never_stop_the_other_documents_events(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sender = FakeSender()
    relay = OutboxRelay(sessions, sender, component="test", batch_size=5, refused_retry_seconds=0)
    async with transaction(sessions, relay) as session:
        for attempts in range(1, 7):  # more events of doc-1 than a batch holds
            stage(session, receipt("doc-1", attempts))
        stage(session, receipt("doc-2"))
    # The cluster refuses doc-1's first event for good (over its message.max.bytes).
    sender.broker_rejects = lambda key, value: key == b"92137:doc-1" and b'"attempts":1' in value

    for _ in range(4):
        await relay.publish_pending()
    # Read on past doc-1's batch: doc-2 went; doc-1's later events wait behind its first.
    assert [key for _, key, _ in sender.sent] == [b"92137:doc-2"]
    assert await pending(sessions) == 6

    sender.broker_rejects = lambda key, value: False  # the cluster's limit raised
    for _ in range(3):
        await relay.publish_pending()
    attempts = [json.loads(value)["attempts"] for _, key, value in sender.sent[1:]]
    assert attempts == [1, 2, 3, 4, 5, 6]  # in order
    assert await pending(sessions) == 0


async def test_while_the_broker_is_away_the_relay_keeps_to_the_oldest_events(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sender = FakeSender(fail_keys={b"92137:doc-1", b"92137:doc-2", b"92137:doc-3"})
    relay = OutboxRelay(sessions, sender, component="test", batch_size=2)
    async with transaction(sessions, relay) as session:
        for document in ("doc-1", "doc-2", "doc-3"):
            stage(session, receipt(document))

    for _ in range(3):  # every key fails alike: no reading on through the whole table
        await relay.publish_pending()
    sender.fail_keys.clear()
    assert await relay.publish_pending() == 2  # the oldest first, once the broker is back
    assert [key for _, key, _ in sender.sent] == [b"92137:doc-1", b"92137:doc-2"]


async def add_rows(sessions: async_sessionmaker[AsyncSession], rows: list[tuple[int, str]]) -> None:
    """Outbox rows with the ids given, as PostgreSQL numbers them: at the INSERT, so a row
    with a lower id may commit after one with a higher."""
    async with sessions() as session, session.begin():
        for row_id, document in rows:
            record = to_record(receipt(document.split("/")[0], attempts=row_id))
            session.add(
                OutboxMessage(
                    id=row_id,
                    event_id=f"e-{row_id}",
                    event_type="t",
                    topic=record.topic,
                    key=record.key,
                    value=record.value,
                    headers={},
                    created_at=utcnow(),
                )
            )


async def test_reading_on_never_sends_a_keys_event_before_an_earlier_one_committed_late(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sender = FakeSender()
    sender.broker_rejects = lambda key, value: key == b"92137:stuck"
    relay = OutboxRelay(sessions, sender, component="test", batch_size=2)
    await add_rows(sessions, [(1, "stuck"), (3, "other")])
    await relay.publish_pending()  # reads 1 and 3; "stuck" fails: it reads on past 3
    # Meanwhile row 2 commits (its id was taken before row 3's), then the same document's
    # next event as row 4.
    await add_rows(sessions, [(2, "late"), (4, "late")])

    for _ in range(4):
        await relay.publish_pending()

    late = [json.loads(value)["attempts"] for _, key, value in sender.sent if key == b"92137:late"]
    assert late == [2, 4]


async def test_a_broker_away_while_reading_on_sends_the_relay_back_to_the_oldest(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sender = FakeSender()
    sender.broker_rejects = lambda key, value: key == b"92137:stuck"
    relay = OutboxRelay(sessions, sender, component="test", batch_size=2)
    await add_rows(sessions, [(1, "stuck"), (2, "a"), (3, "b"), (4, "c"), (5, "d")])
    await relay.publish_pending()  # "stuck" refused for good: reads on past 2
    sender.fail_keys = {b"92137:b", b"92137:c", b"92137:d"}  # now the broker is away

    await relay.publish_pending()  # 3 and 4 fail alike: no reading on through the rest
    sender.fail_keys.clear()
    await relay.publish_pending()
    assert [key for _, key, _ in sender.sent][:2] == [b"92137:a", b"92137:b"]  # oldest first


async def test_after_the_embedded_broker_restarted_the_events_sent_before_go_again(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sender = FakeSender()
    relay = OutboxRelay(sessions, sender, component="test")
    async with transaction(sessions, relay) as session:
        for document in ("hours-ago", "a-minute-ago"):
            stage(session, receipt(document))
    assert await relay.publish_pending() == 2
    broker_since = utcnow()
    sent_at = {
        b"92137:hours-ago": broker_since - timedelta(hours=5),  # a consumer stuck that long
        b"92137:a-minute-ago": broker_since - timedelta(minutes=1),
    }
    async with sessions() as session, session.begin():
        for key, when in sent_at.items():
            await session.execute(
                update(OutboxMessage).where(OutboxMessage.key == key).values(sent_at=when)
            )
    sender.sent.clear()

    restarted = OutboxRelay(sessions, sender, component="test", forgetful_broker_since=broker_since)
    runs = asyncio.create_task(restarted.run())

    async def sent_again() -> bool:
        return len(sender.sent) >= 2 and await pending(sessions) == 0

    try:
        assert await eventually(sent_again)
    finally:
        runs.cancel()
    assert [key for _, key, _ in sender.sent] == list(sent_at)  # in their order
    # Once: a process started again beside the same broker sends nothing twice.
    assert await restarted.republish_forgotten(broker_since) == 0


class Clock:
    """The relay's clock (``kernel.outbox.monotonic``), moved on by the test only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    frozen = Clock()
    monkeypatch.setattr(outbox, "monotonic", frozen)
    return frozen


async def add_on_topics(
    sessions: async_sessionmaker[AsyncSession], rows: list[tuple[str, str, int]]
) -> None:
    """Outbox rows of ``(topic, document, attempts)``, in that order."""
    async with sessions() as session, session.begin():
        for topic, document, attempts in rows:
            record = to_record(receipt(document, attempts))
            session.add(
                OutboxMessage(
                    event_id=f"{topic}-{document}-{attempts}",
                    event_type="t",
                    topic=topic,
                    key=record.key,
                    value=record.value,
                    headers={},
                    created_at=utcnow(),
                )
            )


def held_back(component: str, topic: str, reason: str) -> float | None:
    return REGISTRY.get_sample_value(
        "hub_outbox_held_back_total", {"component": component, "topic": topic, "reason": reason}
    )


async def test_a_topic_missing_on_the_cluster_holds_its_own_events_only(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # More events on the missing topic than a batch holds, then the other topic's, then
    # a second event of the first document on the missing topic.
    await add_on_topics(
        sessions,
        [("gateway.missing", f"m-{n}", 1) for n in range(20)]
        + [("gateway.receipts", f"r-{n}", 1) for n in range(5)]
        + [("gateway.missing", "m-0", 2)],
    )
    sender = FakeSender()
    sender.missing_topics = {"gateway.missing"}
    relay = OutboxRelay(sessions, sender, component="missing-topic-test", batch_size=10)

    with caplog.at_level(logging.DEBUG, logger="kernel.outbox"):
        for _ in range(6):  # the clock stands still: the topic is held back all along
            await relay.publish_pending()
    # The other topic's events went: the relay read on past the missing topic's batches,
    # which cost one wait for the topic's metadata, not one per row (40 s each).
    assert [key for _, key, _ in sender.sent] == [b"92137:r-%d" % n for n in range(5)]
    assert [topic for topic, _, _ in sender.tried].count("gateway.missing") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "topic gateway.missing does not exist on the cluster" in warnings[0]
    assert held_back("missing-topic-test", "gateway.missing", "topic-missing") == 1

    sender.missing_topics.clear()  # created by an operator
    clock.now += 1  # the first wait over
    for _ in range(4):
        await relay.publish_pending()
    assert await pending(sessions) == 0
    missing = [(key, json.loads(value)["attempts"]) for topic, key, value in sender.sent[5:]]
    assert [key for key, _ in missing] == [b"92137:m-%d" % n for n in range(20)] + [b"92137:m-0"]
    assert missing[-1] == (b"92137:m-0", 2)  # a key's events in their order


async def test_a_record_the_cluster_refuses_for_good_is_tried_again_less_and_less_often(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    sender = FakeSender()
    sender.broker_rejects = lambda key, value: key == b"92137:poison"
    relay = OutboxRelay(sessions, sender, component="refusal-test", refused_retry_max_seconds=4)
    async with transaction(sessions, relay) as session:
        stage(session, receipt("poison", attempts=1))
        stage(session, receipt("poison", attempts=2))

    def tries() -> int:
        return sum(1 for _, key, _ in sender.tried if key == b"92137:poison")

    with caplog.at_level(logging.DEBUG, logger="kernel.outbox"):
        for number in range(20):  # a pass at each commit of the process (its wake)
            async with transaction(sessions, relay) as session:
                stage(session, receipt(f"doc-{number}"))
            await relay.publish_pending()
        assert tries() == 1  # not 20 times up to 8 MiB
        assert len(sender.sent) == 20  # the other documents' events went meanwhile
        assert await pending(sessions) == 2  # poison's second event waits behind its first

        waits = []
        for _ in range(5):  # tried again after 1 s, then 2, 4, and at most 4
            before, waited = tries(), 0
            while tries() == before:
                clock.now += 1
                waited += 1
                await relay.publish_pending()
            waits.append(waited)
        assert waits == [1, 2, 4, 4, 4]

    refusals = [r for r in caplog.records if "refuses event" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING] + [logging.DEBUG] * 5
    assert held_back("refusal-test", "gateway.receipts", "refused") == 6

    sender.broker_rejects = lambda key, value: False  # the cluster's limit raised
    clock.now += 4
    await relay.publish_pending()
    await relay.publish_pending()
    assert await pending(sessions) == 0
    attempts = [json.loads(value)["attempts"] for _, key, value in sender.sent[20:]]
    assert attempts == [1, 2]  # in order


async def test_a_hold_on_a_key_whose_events_are_gone_ends_with_them(
    sessions: async_sessionmaker[AsyncSession], clock: Clock
) -> None:
    # The refused event deleted by an operator (or sent by another replica): a new event of
    # the document waited out the old hold, up to five minutes, with nothing before it.
    sender = FakeSender()
    sender.broker_rejects = lambda key, value: key == b"92137:poison"
    relay = OutboxRelay(sessions, sender, component="forget-test", refused_retry_max_seconds=300)
    async with transaction(sessions, relay) as session:
        stage(session, receipt("poison", attempts=1))
    for _ in range(5):  # refused five times: held back for 16 s now
        clock.now += 1000
        await relay.publish_pending()
    async with sessions() as session, session.begin():
        await session.execute(delete(OutboxMessage))
    await relay.publish_pending()  # nothing pending

    sender.broker_rejects = lambda key, value: False
    async with transaction(sessions, relay) as session:
        stage(session, receipt("poison", attempts=2))
    await relay.publish_pending()
    assert await pending(sessions) == 0


async def test_an_event_carries_the_callers_trace_context_and_not_its_baggage(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # W3C baggage is whatever the caller puts in it (a national number, say, kilobytes of
    # it): neither stored with the events nor sent on to external targets.
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with continue_trace({"traceparent": traceparent, "baggage": "niss=85073003328"}):
        assert inject_headers() == {"traceparent": traceparent}
        async with transaction(sessions, None) as session:
            stage(session, receipt("doc-1"))
    async with sessions() as session:
        headers = (await session.scalars(select(OutboxMessage.headers))).one()
    assert headers.get("traceparent") == traceparent
    assert "baggage" not in headers
