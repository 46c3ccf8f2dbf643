"""The opinions inbound adapter with a fake platform and SQLite; the opinion_rest connector
against a fake platform (httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import CloudEvent, from_record, new_event
from contracts.events.outside import OpinionReceived
from contracts.events.urban import OpinionRequested
from gateway.connectors.base import ConnectorContext, Delivery
from gateway.connectors.opinions import (
    OpinionRestConnector,
    OpinionRestSettings,
    create_connector,
)
from gateway.deliveries import MIGRATIONS
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.inbound import opinions as opinions_module
from gateway.inbound.opinions import HttpOpinionAnswers, OpinionInbound
from gateway.inbound.records import InboundDocument, WaitingItem, WaitingItems
from kernel.outbox import OutboxMessage
from kernel.settings import HubSettings
from tests.support.clock import Clock
from tests.support.databases import migrated_sessions, sqlite_sessions

ANSWER = {
    "answerId": "AV-1",
    "requestId": "OP-1",
    "fileId": "F-1",
    "reference": "PU/2026/0012",
    "body": "SRI",
    "verdict": "unfavourable",
    "text": "Accès pompiers insuffisant.",
    "givenOn": "2026-03-10",
}


class FakePlatform:
    def __init__(self, tenant: str = "62063", answers: list[dict[str, Any]] | None = None) -> None:
        self.tenant = tenant
        self.answers = [ANSWER] if answers is None else answers
        self.acknowledged: list[str] = []
        self.fail_ack_once = False

    async def list_new(self) -> list[dict[str, Any]]:
        return [a for a in self.answers if a["answerId"] not in self.acknowledged]

    async def acknowledge(self, answer_id: str) -> None:
        if self.fail_ack_once:
            self.fail_ack_once = False
            raise httpx.ConnectError("lost")
        self.acknowledged.append(answer_id)


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        yield sessions


@pytest.fixture
async def any_sessions(
    database: tuple[str, str | None],
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The gateway's database on SQLite, then on PostgreSQL (which refuses what SQLite keeps)."""
    async with migrated_sessions(database, "gateway", MIGRATIONS) as sessions:
        yield sessions


async def test_an_answer_is_published_once_even_when_its_acknowledgement_is_lost(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    platform = FakePlatform()
    platform.fail_ack_once = True
    inbound = OpinionInbound(sessions=sessions, accounts=[platform])

    assert await inbound.poll_once() == 0  # recorded, not acknowledged
    assert await inbound.poll_once() == 1  # found recorded: only acknowledged
    assert await inbound.poll_once() == 0

    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage))).all()
    [event] = [from_record(row.headers, row.value) for row in rows]
    data = event.data_as(OpinionReceived)
    assert (event.tenant, event.subject) == ("62063", "F-1")
    assert (data.opinion_id, data.verdict, data.given_on) == (
        "OP-1",
        "unfavourable",
        date(2026, 3, 10),
    )
    assert platform.acknowledged == ["AV-1"]


async def test_an_answer_too_large_for_an_event_is_kept_refused_and_acknowledged(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    platform = FakePlatform()
    platform.answers = [{**ANSWER, "answerId": "AV-0", "text": "x" * 9_000_000}, ANSWER]
    inbound = OpinionInbound(sessions=sessions, accounts=[platform])

    await inbound.poll_once()
    assert platform.acknowledged == ["AV-0", "AV-1"]  # not asked again at every poll
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage))).all()
        kept = (await session.scalars(select(InboundDocument).order_by(InboundDocument.id))).all()
    assert [from_record(row.headers, row.value).data_as(OpinionReceived).text for row in rows] == [
        ANSWER["text"]
    ]
    assert [(row.source_message_id, row.status) for row in kept] == [
        ("AV-0", "refused"),
        ("AV-1", "published"),
    ]
    assert "larger than one Kafka record" in (kept[0].reason or "")


#: Another commune's account, whose platform numbered its own answer "AV-1" too.
OTHER_ANSWER = {**ANSWER, "requestId": "OP-9", "fileId": "F-9", "verdict": "favourable"}


async def published_and_recorded(
    sessions: async_sessionmaker[AsyncSession],
) -> tuple[list[tuple[str, str]], list[tuple[str | None, str, str, str, str]]]:
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
        kept = (await session.scalars(select(InboundDocument).order_by(InboundDocument.id))).all()
    events = [from_record(row.headers, row.value) for row in rows]
    return (
        [(event.tenant, event.subject) for event in events],
        [
            (row.tenant, row.source, row.source_message_id, row.status, row.source_status)
            for row in kept
        ],
    )


async def test_two_tenants_answers_of_one_id_are_each_published_and_acknowledged_in_their_account(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    liege, sambreville = FakePlatform("62063"), FakePlatform("92137", [OTHER_ANSWER])
    inbound = OpinionInbound(sessions=sessions, accounts=[liege, sambreville])

    assert await inbound.poll_once() == 2
    assert await inbound.poll_once() == 0

    events, kept = await published_and_recorded(sessions)
    assert events == [("62063", "F-1"), ("92137", "F-9")]
    assert kept == [
        ("62063", "62063", "AV-1", "published", "acknowledged"),
        ("92137", "92137", "AV-1", "published", "acknowledged"),
    ]
    assert (liege.acknowledged, sambreville.acknowledged) == (["AV-1"], ["AV-1"])


async def test_a_database_blip_on_one_account_leaves_the_others_taken(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Raised out of the poll, it skipped the other tenants' accounts and restarted the job.
    liege, sambreville = FakePlatform("62063"), FakePlatform("92137", [OTHER_ANSWER])
    not_due = WaitingItems.not_due
    blips = ["database is locked"]

    async def once_away(self: WaitingItems, source: str, ids: list[str]) -> set[str]:
        if blips:
            raise OperationalError("SELECT", {}, Exception(blips.pop()))
        return await not_due(self, source, ids)

    monkeypatch.setattr(WaitingItems, "not_due", once_away)
    inbound = OpinionInbound(sessions=sessions, accounts=[liege, sambreville])

    assert await inbound.poll_once() == 1
    assert (liege.acknowledged, sambreville.acknowledged) == ([], ["AV-1"])
    assert await inbound.poll_once() == 1
    assert liege.acknowledged == ["AV-1"]


async def test_a_tenants_answer_waiting_for_its_acknowledgement_is_left_to_its_own_account(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    liege, sambreville = FakePlatform("62063"), FakePlatform("92137", [OTHER_ANSWER])
    liege.fail_ack_once = True
    inbound = OpinionInbound(sessions=sessions, accounts=[liege, sambreville])

    # Liège's answer is recorded and not acknowledged; Sambreville's poll must not
    # acknowledge its own "AV-1" in Liège's row's name (unpublished), nor mark Liège's row.
    assert await inbound.poll_once() == 1
    events, kept = await published_and_recorded(sessions)
    assert events == [("62063", "F-1"), ("92137", "F-9")]
    assert kept == [
        ("62063", "62063", "AV-1", "published", "pending"),
        ("92137", "92137", "AV-1", "published", "acknowledged"),
    ]
    assert (liege.acknowledged, sambreville.acknowledged) == ([], ["AV-1"])

    assert await inbound.poll_once() == 1  # Liège's own poll acknowledges it at last
    assert (await published_and_recorded(sessions))[1][0][-1] == "acknowledged"
    assert liege.acknowledged == ["AV-1"]


async def test_an_answer_recorded_by_another_replica_meanwhile_is_found_in_its_tenants_account(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await OpinionInbound(sessions=sessions, accounts=[FakePlatform("62063")]).poll_once()
    inbound = OpinionInbound(sessions=sessions, accounts=[])

    # As a replica that looked before the other's commit: it records, and the database
    # tells it whether the answer was there already, in that account only.
    theirs = await inbound._record("92137", "AV-1", OTHER_ANSWER)
    again = await inbound._record("62063", "AV-1", ANSWER)

    events, kept = await published_and_recorded(sessions)
    assert events == [("62063", "F-1"), ("92137", "F-9")]
    assert (theirs.row_id, again.row_id) == (2, 1)
    assert [row[:3] for row in kept] == [("62063", "62063", "AV-1"), ("92137", "92137", "AV-1")]


def connector(handler: Any) -> OpinionRestConnector:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    config = {"type": "opinion_rest", "base_url": "http://op/api/v1", "api_key": "k"}
    built = create_connector(ConnectorContext("62063", HubSettings(), http), config)
    assert isinstance(built, OpinionRestConnector)
    return built


def delivery() -> Delivery:
    data = OpinionRequested(
        file_id="F-1",
        opinion_id="OP-1",
        body="SRI",
        subject="Sécurité incendie",
        due_on=date(2026, 4, 1),
        reference="PU/2026/0012",
    )
    event = new_event(data, tenant="62063", subject="F-1", source="urn:test")
    return Delivery("e1:opinion-request", "62063", "opinion-request", event, 1)


@pytest.mark.parametrize(
    ("response", "error", "reason"),
    [
        (httpx.Response(401), RetryableDeliveryError, "refused the hub's API key"),
        (httpx.Response(422, json={"detail": "bad body"}), PermanentDeliveryError, "bad body"),
        (httpx.Response(503), RetryableDeliveryError, "HTTP 503"),
        (httpx.Response(201, json={}), RetryableDeliveryError, "no requestId"),
    ],
)
async def test_the_connector_maps_platform_errors(
    response: httpx.Response, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error) as raised:
        await connector(lambda request: response).deliver(delivery())
    assert reason in str(raised.value)


async def test_the_connector_sends_the_request_with_its_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def platform(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"requestId": "OP-1", "status": "pending"})

    assert (await connector(platform).deliver(delivery())).external_reference == "OP-1"
    assert seen[0].headers["Idempotency-Key"] == "e1:opinion-request"
    assert seen[0].url.path == "/api/v1/requests"


# -- answers that cannot be taken ----------------------------------------------------------


async def waiting_rows(sessions: async_sessionmaker[AsyncSession]) -> list[WaitingItem]:
    async with sessions() as session:
        return list((await session.scalars(select(WaitingItem).order_by(WaitingItem.id))).all())


async def test_answers_whose_ids_the_inbound_log_cannot_keep_are_left_alone(
    any_sessions: async_sessionmaker[AsyncSession],
) -> None:
    platform = FakePlatform(
        answers=[{**ANSWER, "answerId": "A" * 250}, {**ANSWER, "answerId": "AV-\u0000"}, ANSWER]
    )
    inbound = OpinionInbound(sessions=any_sessions, accounts=[platform])

    assert await inbound.poll_once() == 1

    # Recorded (SQLite), or refused by PostgreSQL at every poll and never shown: left alone
    # and logged, as Peppol's and NOTICe's are.
    assert platform.acknowledged == ["AV-1"]
    _, kept = await published_and_recorded(any_sessions)
    assert [row[2] for row in kept] == ["AV-1"]


# The second only where a database refuses it: SQLite keeps a NUL in a VARCHAR.
@pytest.mark.parametrize(
    ("failing", "database"),
    [
        ("its event", "sqlite"),
        pytest.param("its event", "postgresql", marks=pytest.mark.postgres),
        pytest.param("its row (a NUL in the body)", "postgresql", marks=pytest.mark.postgres),
    ],
    indirect=["database"],
)
async def test_an_answer_that_cannot_be_recorded_waits_shown_and_is_tried_less_often(
    any_sessions: async_sessionmaker[AsyncSession],
    database: tuple[str, str | None],
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    platform = FakePlatform(answers=[{**ANSWER, "answerId": "AV-0", "body": "SRI\u0000"}, ANSWER])
    stage, plain_text = opinions_module.stage, opinions_module.plain_text

    def failing_stage(session: AsyncSession, event: CloudEvent) -> None:
        if event.data_as(OpinionReceived).body == "SRI\u0000":
            raise RuntimeError("a bug nobody foresaw")
        stage(session, event)

    if failing.startswith("its event"):
        monkeypatch.setattr(opinions_module, "stage", failing_stage)
    else:
        monkeypatch.setattr(opinions_module, "plain_text", lambda text: text)
    clock = Clock()
    inbound = OpinionInbound(sessions=any_sessions, accounts=[platform], clock=clock)

    assert await inbound.poll_once() == 1

    assert platform.acknowledged == ["AV-1"]  # not held behind it
    [waiting] = await waiting_rows(any_sessions)
    assert (waiting.channel, waiting.source, waiting.source_message_id) == (
        "opinion",
        "62063",
        "AV-0",
    )
    assert (waiting.tenant, waiting.tries) == ("62063", 1)
    assert waiting.reason.startswith("It could not be recorded: ")
    clock.advance(5)
    assert await inbound.poll_once() == 0  # not tried at every poll
    assert (await waiting_rows(any_sessions))[0].tries == 1

    monkeypatch.setattr(opinions_module, "stage", stage)
    monkeypatch.setattr(opinions_module, "plain_text", plain_text)
    clock.advance(6)
    assert await inbound.poll_once() == 1
    assert platform.acknowledged == ["AV-1", "AV-0"]
    assert await waiting_rows(any_sessions) == []  # recorded: no longer waiting


async def test_an_answer_waits_in_its_own_account_though_another_has_its_id(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = opinions_module.stage

    def failing_for_sambreville(session: AsyncSession, event: CloudEvent) -> None:
        if event.tenant == "92137":
            raise RuntimeError("a bug nobody foresaw")
        stage(session, event)

    monkeypatch.setattr(opinions_module, "stage", failing_for_sambreville)
    liege, sambreville = FakePlatform("62063"), FakePlatform("92137", [OTHER_ANSWER])
    inbound = OpinionInbound(sessions=sessions, accounts=[liege, sambreville])

    assert await inbound.poll_once() == 1

    # Liège's "AV-1", recorded, hid Sambreville's from the operators.
    [waiting] = await waiting_rows(sessions)
    assert (waiting.source, waiting.source_message_id, waiting.tenant) == ("92137", "AV-1", "92137")


async def test_an_answer_id_is_one_segment_of_the_acknowledgements_path() -> None:
    seen: list[httpx.Request] = []

    def platform(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"answerId": "AV/1?x", "status": "acknowledged"})

    settings = OpinionRestSettings.model_validate(
        {"type": "opinion_rest", "base_url": "http://op/api/v1", "api_key": SecretStr("k")}
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(platform)) as http:
        await HttpOpinionAnswers("62063", settings, http).acknowledge("AV/1?x")

    assert seen[0].url.raw_path == b"/api/v1/answers/AV%2F1%3Fx/acknowledge"


async def test_an_account_that_cannot_be_listed_is_counted_at_each_poll(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    class Away(FakePlatform):
        async def list_new(self) -> list[dict[str, Any]]:
            raise httpx.ConnectError("refused")

    inbound = OpinionInbound(sessions=sessions, accounts=[Away("92137")])
    failures = {"channel": "opinion", "source": "92137"}
    before = REGISTRY.get_sample_value("hub_inbound_poll_failures_total", failures) or 0.0

    await inbound.poll_once()

    assert REGISTRY.get_sample_value("hub_inbound_poll_failures_total", failures) == before + 1
