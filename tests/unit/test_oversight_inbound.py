"""The oversight inbound adapter with a fake oversight service and SQLite: each outcome once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import CloudEvent, from_record
from contracts.events.oversight import OversightOutcomeReceived
from gateway.connectors.oversight_soap import Outcome
from gateway.deliveries import MIGRATIONS
from gateway.inbound import oversight as oversight_module
from gateway.inbound.oversight import OversightInbound
from gateway.inbound.records import InboundDocument
from kernel.outbox import OutboxMessage
from tests.support.databases import sqlite_sessions

TENANT, OTHER = "92137", "62063"


class FakeOversight:
    """One commune's outcomes at the oversight service, listed after a cursor, a page at a time."""

    def __init__(self, tenant: str, page: int = 2) -> None:
        self.tenant = tenant
        self.outcomes: list[Outcome] = []
        self.page = page
        self.calls: list[int] = []
        self.failing = False

    def decide(self, item_id: str, outcome: str = "approved", reason: str | None = None) -> None:
        cursor = len(self.outcomes) + 1
        self.outcomes.append(
            Outcome(
                cursor=cursor,
                acknowledgement_number=f"TUT-{self.tenant}-{cursor}",
                item_id=item_id,
                decision_number=f"CC/2026/{cursor:04d}",
                outcome=outcome,  # type: ignore[arg-type]
                decided_on=date(2026, 4, cursor),
                reason=reason,
            )
        )

    async def list_outcomes(self, since: int) -> tuple[list[Outcome], int]:
        self.calls.append(since)
        if self.failing:
            raise httpx.ConnectError("the oversight service is away")
        page = [o for o in self.outcomes if o.cursor > since][: self.page]
        return page, page[-1].cursor if page else since


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        yield sessions


async def published(sessions: async_sessionmaker[AsyncSession]) -> list[CloudEvent]:
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    return [from_record(row.headers, row.value) for row in rows]


async def records(sessions: async_sessionmaker[AsyncSession]) -> list[InboundDocument]:
    async with sessions() as session:
        rows = await session.scalars(select(InboundDocument).order_by(InboundDocument.id))
        return list(rows.all())


async def test_each_outcome_is_recorded_and_published_once_for_its_tenant(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ours, theirs = FakeOversight(TENANT), FakeOversight(OTHER)
    ours.decide("item-1")
    ours.decide("item-2", "annulled", "Violation de la loi")
    ours.decide("item-3", "no_objection")
    theirs.decide("item-9")
    inbound = OversightInbound(sessions=sessions, sources=[ours, theirs])

    assert await inbound.poll_once() == 4
    assert await inbound.poll_once() == 0  # listed again from the cursor: nothing new

    events = await published(sessions)
    assert [(e.tenant, e.subject) for e in events] == [
        (TENANT, "item-1"),
        (TENANT, "item-2"),
        (TENANT, "item-3"),
        (OTHER, "item-9"),
    ]
    annulled = events[1].data_as(OversightOutcomeReceived)
    assert (annulled.outcome, annulled.reason) == ("annulled", "Violation de la loi")
    assert annulled.acknowledgement_number == f"TUT-{TENANT}-2"
    assert {e.type for e in events} == {OversightOutcomeReceived.TYPE}
    rows = await records(sessions)
    assert {(r.channel, r.status) for r in rows} == {("oversight", "published")}
    assert [r.event_id for r in rows] == [e.id for e in events]
    assert ours.calls[-1] == 3  # pages of 2, then from the last cursor


async def test_a_restarted_gateway_resumes_after_the_last_recorded_outcome(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    oversight = FakeOversight(TENANT)
    oversight.decide("item-1")
    oversight.decide("item-2")
    await OversightInbound(sessions=sessions, sources=[oversight]).poll_once()
    oversight.decide("item-3")
    oversight.calls.clear()

    restarted = OversightInbound(sessions=sessions, sources=[oversight])
    assert await restarted.poll_once() == 1

    assert oversight.calls[0] == 2
    assert [e.subject for e in await published(sessions)] == ["item-1", "item-2", "item-3"]


async def test_an_outcome_listed_again_from_an_older_cursor_is_not_published_twice(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    oversight = FakeOversight(TENANT)
    oversight.decide("item-1")
    await OversightInbound(sessions=sessions, sources=[oversight]).poll_once()
    # Another replica that started before it was recorded lists it again from cursor 0.
    replica = OversightInbound(sessions=sessions, sources=[oversight])
    replica._cursors[TENANT] = 0
    assert await replica.poll_once() == 0
    assert len(await published(sessions)) == 1


async def test_an_unreachable_service_records_nothing_and_is_asked_again(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    oversight = FakeOversight(TENANT)
    oversight.decide("item-1")
    oversight.failing = True
    inbound = OversightInbound(sessions=sessions, sources=[oversight])
    failures = {"channel": "oversight", "source": TENANT}
    before = REGISTRY.get_sample_value("hub_inbound_poll_failures_total", failures) or 0.0

    assert await inbound.poll_once() == 0
    assert await published(sessions) == []
    assert REGISTRY.get_sample_value("hub_inbound_poll_failures_total", failures) == before + 1

    oversight.failing = False
    assert await inbound.poll_once() == 1


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"outcome": "suspended"}, "outcome breaks the hub's event contract"),  # unknown
        ({"outcome": "annulled", "reason": "x" * 9_000_000}, "larger than one Kafka record"),
    ],
)
async def test_an_outcome_the_event_cannot_carry_is_kept_refused_and_the_rest_go_on(
    sessions: async_sessionmaker[AsyncSession], changes: dict[str, Any], reason: str
) -> None:
    oversight = FakeOversight(TENANT)
    oversight.decide("item-1", **changes)
    oversight.decide("item-2")
    oversight.decide("item-3")
    inbound = OversightInbound(sessions=sessions, sources=[oversight])

    assert await inbound.poll_once() == 2
    assert await inbound.poll_once() == 0

    assert [e.subject for e in await published(sessions)] == ["item-2", "item-3"]
    [refused] = [r for r in await records(sessions) if r.status == "refused"]
    assert refused.source_message_id.endswith("-1") and refused.event_id is None
    assert reason in (refused.reason or "")
    # A restart resumes after it too.
    oversight.calls.clear()
    assert await OversightInbound(sessions=sessions, sources=[oversight]).poll_once() == 0
    assert oversight.calls[0] == 3


async def test_an_outcome_without_a_date_is_kept_refused_and_the_rest_go_on(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    oversight = FakeOversight(TENANT, page=10)
    oversight.decide("item-1")
    oversight.decide("item-2")
    oversight.decide("item-3", "annulled", "Excès de pouvoir")
    # zeep reads an absent or impossible DecidedOn ("2026-13-45") as None.
    oversight.outcomes[1] = replace(oversight.outcomes[1], decided_on=None)
    inbound = OversightInbound(sessions=sessions, sources=[oversight])

    # Its stored copy raised (None.isoformat()) before it could be refused: the cursor
    # stayed before it, and the tenant's later outcomes (this annulment) waited for ever.
    assert await inbound.poll_once() == 2
    assert await inbound.poll_once() == 0

    assert [e.subject for e in await published(sessions)] == ["item-1", "item-3"]
    refused = (await records(sessions))[1]
    assert (refused.status, refused.event_id) == ("refused", None)
    assert refused.reason == "As listed, the service gave it no readable DecidedOn (a date)."
    assert json.loads(refused.document)["decided_on"] is None
    assert oversight.calls == [0, 3, 3]


async def test_an_outcome_whose_event_cannot_be_made_is_kept_refused_and_the_rest_go_on(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    oversight = FakeOversight(TENANT, page=10)
    for item_id in ("item-1", "item-2", "item-3"):
        oversight.decide(item_id)
    new_event = oversight_module.new_event

    def failing_for_item_2(data: Any, **kwargs: Any) -> Any:
        if kwargs["subject"] == "item-2":  # whatever else the service gave that zeep passed
            raise TypeError("an answer nobody foresaw")
        return new_event(data, **kwargs)

    monkeypatch.setattr(oversight_module, "new_event", failing_for_item_2)
    inbound = OversightInbound(sessions=sessions, sources=[oversight])

    assert await inbound.poll_once() == 2

    assert [e.subject for e in await published(sessions)] == ["item-1", "item-3"]
    refused = (await records(sessions))[1]
    assert refused.status == "refused"
    assert "(TypeError: an answer nobody foresaw)" in (refused.reason or "")
