"""The meeting service's side of the regional oversight, on SQLite: the transmission request
staged with the decision, the receipt, the outcome on the item, and migration 3."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts.envelope import CloudEvent, from_record, headers_as_text, new_event, to_record
from contracts.events.gateway import DeliveryReceipt
from contracts.events.meeting import (
    DecisionOversightOutcome,
    DecisionTransmissionRequested,
    ItemDecided,
)
from contracts.events.oversight import OversightOutcomeReceived
from kernel.consumer import EventConsumer
from kernel.database import create_engine, session_factory
from kernel.migrations import migrate
from kernel.outbox import OutboxMessage
from services.meeting import agenda
from services.meeting.configuration import Category, MeetingConfig
from services.meeting.domain import Decision, Transition
from services.meeting.oversight import HANDLERS
from services.meeting.schemas import ItemView
from services.meeting.tables import MIGRATIONS, Item

TENANT = "92137"
NOW = datetime(2026, 3, 1, 10, tzinfo=UTC)
COUNCIL = MeetingConfig(
    id="council",
    kind="council",
    title="Conseil communal",
    decision_prefix="CC",
    proposing_services=("finances",),
    categories=(
        Category(id="finances", title="Finances", oversight=True),
        Category(id="reglements", title="Règlements"),
    ),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'meeting.db'}")
    yield engine
    await engine.dispose()


@pytest.fixture
async def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    await migrate(engine, "meeting", MIGRATIONS)
    return session_factory(engine)


async def decided_item(sessions: async_sessionmaker[AsyncSession], category: str) -> str:
    async with sessions() as session, session.begin():
        meeting = await agenda.create_meeting(
            session,
            tenant=TENANT,
            config=COUNCIL,
            date=NOW + timedelta(days=1),
            place="Hôtel de ville",
            attendees=(),
            now=NOW,
        )
        item = await agenda.create_item(
            session,
            tenant=TENANT,
            config=COUNCIL,
            new=agenda.NewItem(
                title="Budget 2026", proposing_service="finances", category=category
            ),
            origin="rest",
            creator="test",
            now=NOW,
        )
        for transition in (Transition.PROPOSE, Transition.VALIDATE):
            await agenda.apply_transition(session, item, transition, NOW)
        await agenda.apply_transition(session, item, Transition.PRESENT, NOW, meeting)
        await agenda.decide(session, COUNCIL, item, Decision.ACCEPTED, "Approuvé.", NOW)
        return item.id


async def staged(sessions: async_sessionmaker[AsyncSession]) -> list[CloudEvent]:
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    return [from_record(row.headers, row.value) for row in rows]


async def view(sessions: async_sessionmaker[AsyncSession], item_id: str) -> ItemView:
    async with sessions() as session:
        return ItemView.of(await agenda.find_item(session, TENANT, item_id))


def receipt(item_id: str, outcome: str, **changes: object) -> CloudEvent:
    data = DeliveryReceipt.model_validate(
        {
            "source_event_id": "e-1",
            "source_event_type": DecisionTransmissionRequested.TYPE,
            "route": "decision-oversight",
            "connector": "oversight_soap",
            "idempotency_key": "e-1:decision-oversight",
            "outcome": outcome,
            "attempts": 1,
        }
        | changes
    )
    return new_event(data, tenant=TENANT, subject=item_id, source="urn:hub:gateway")


def oversight_outcome(item_id: str, outcome: str, reason: str | None = None) -> CloudEvent:
    data = OversightOutcomeReceived.model_validate(
        {
            "item_id": item_id,
            "decision_number": "CC/2026/0001",
            "acknowledgement_number": "TUT-2026-000001",
            "outcome": outcome,
            "decided_on": date(2026, 4, 1),
            "reason": reason,
        }
    )
    return new_event(data, tenant=TENANT, subject=item_id, source="urn:hub:gateway:oversight")


def consumer(sessions: async_sessionmaker[AsyncSession]) -> EventConsumer:
    return EventConsumer(component="meeting", sessions=sessions, handlers=HANDLERS)


async def handle(sessions: async_sessionmaker[AsyncSession], event: CloudEvent) -> str:
    """Through the consumer, as from Kafka: its inbox skips a redelivered event."""
    record = to_record(event)
    return await consumer(sessions).handle(headers_as_text(record.headers), record.value, "t")


async def test_a_decision_subject_to_oversight_stages_its_transmission_with_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    item_id = await decided_item(sessions, "finances")
    other = await decided_item(sessions, "reglements")

    events = await staged(sessions)
    transmissions = [e for e in events if e.type == DecisionTransmissionRequested.TYPE]
    assert [e.subject for e in transmissions] == [item_id]  # not the item of "reglements"
    request = transmissions[0].data_as(DecisionTransmissionRequested)
    decided = next(e for e in events if e.type == ItemDecided.TYPE and e.subject == item_id)
    assert (request.decision_number, request.category) == ("CC/2026/0001", "finances")
    assert request.decision_text == decided.data_as(ItemDecided).decision_text == "Approuvé."
    assert (await view(sessions, other)).deliveries == []


async def test_the_receipt_moves_the_oversight_delivery_on(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    item_id = await decided_item(sessions, "finances")

    await handle(sessions, receipt(item_id, "failed", reason="WS-Security: not trusted"))
    [delivery] = (await view(sessions, item_id)).deliveries
    assert (delivery.status, delivery.reference) == ("failed", None)
    assert delivery.detail is not None and "not trusted" in delivery.detail

    await handle(sessions, receipt(item_id, "delivered", external_reference="TUT-2026-000001"))
    [delivery] = (await view(sessions, item_id)).deliveries
    assert (delivery.kind, delivery.status, delivery.reference) == (
        "oversight",
        "in_progress",
        "TUT-2026-000001",
    )


async def test_an_annulment_completes_the_delivery_and_shows_on_the_item_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    item_id = await decided_item(sessions, "finances")
    await handle(sessions, receipt(item_id, "delivered", external_reference="TUT-2026-000001"))
    before = len(await staged(sessions))

    annulled = oversight_outcome(item_id, "annulled", "Violation de la loi")
    assert await handle(sessions, annulled) == "handled"
    assert await handle(sessions, annulled) == "duplicate"  # redelivered: the inbox skips it
    assert await handle(sessions, oversight_outcome(item_id, "approved")) == "handled"
    # A late receipt does not take the delivery back.
    await handle(sessions, receipt(item_id, "delivered", external_reference="TUT-2026-000001"))

    item = await view(sessions, item_id)
    assert item.oversight_outcome == "annulled"
    [delivery] = item.deliveries
    assert delivery.status == "done"
    assert delivery.detail == "annulled by the oversight on 2026-04-01: Violation de la loi"
    assert item.deliveries_complete is True
    [announced] = [
        e.data_as(DecisionOversightOutcome)
        for e in (await staged(sessions))[before:]
        if e.type == DecisionOversightOutcome.TYPE
    ]
    assert (announced.item_id, announced.outcome) == (item_id, "annulled")
    assert announced.acknowledgement_number == "TUT-2026-000001"


async def test_an_outcome_for_an_unknown_decision_is_skipped(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    assert await handle(sessions, oversight_outcome("no-such-item", "approved")) == "handled"
    assert await handle(sessions, receipt("no-such-item", "delivered")) == "handled"
    async with sessions() as session:
        assert (await session.scalars(select(Item))).all() == []


async def test_migration_3_adds_the_outcome_column_to_an_older_database(
    engine: AsyncEngine,
) -> None:
    await migrate(engine, "meeting", MIGRATIONS[:2])
    async with engine.begin() as connection:  # as a database made before the column existed
        await connection.execute(text("ALTER TABLE meeting_items DROP COLUMN oversight_outcome"))

    assert await migrate(engine, "meeting", MIGRATIONS[:3]) == 3

    async with engine.connect() as connection:
        await connection.execute(text("SELECT oversight_outcome FROM meeting_items"))
