"""A newer version (``….v2``) of a type a consumer takes, its producer upgraded first: kept
for a replay after the consumer's upgrade (a service), or ended dead with its service told
(the gateway), never skipped as if it were another's type (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from aiokafka import TopicPartition
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import contracts.events.base
from contracts.envelope import CloudEvent, type_stem
from contracts.events.base import EventData
from contracts.events.courrier import OutgoingMailSendRequested
from contracts.events.gateway import DeliveryReceipt
from gateway.connectors.base import _EVENT_TYPES as connector_event_types
from gateway.deliveries import MIGRATIONS as GATEWAY_MIGRATIONS
from gateway.engine import NO_ROUTE, ROUTE_GONE_FOR, DeliveryEngine
from gateway.routing import Route, RoutingTable
from kernel.api import rejected_events_router
from kernel.app import BackgroundTask, create_app
from kernel.auth import issue_token
from kernel.consumer import EventConsumer, Incoming, NotHandledHere, RejectedEvent
from kernel.errors import PROBLEM_BASE
from kernel.kafka import FETCH_MAX_WAIT_MS, FetchPacing
from kernel.settings import HubSettings
from kernel.tenants import Tenant
from tests.support.clock import Clock
from tests.support.databases import migrated_sessions
from tests.support.servers import serving
from tests.unit.test_consumer import (
    MIGRATIONS,
    TENANT,
    OneFetch,
    fake_sleep,
    inbox_ids,
    incoming,
    receipt_for,
)
from tests.unit.test_delivery_engine import (
    SEND,
    FakeConnector,
    as_record,
    correct_kept_time,
    deliveries,
    kept_records,
    mail_event,
    make_engine,
    receipts,
    with_headers,
)

RECEIPT_V2 = "gateway.delivery.receipt.v2"
SEND_V2 = "courrier.outgoing_mail.send_requested.v2"
#: A type of another stem on the same topic: a consumer that does not take it ignores it.
UNRELATED = "gateway.something_else.happened.v2"


@pytest.fixture
async def sessions(
    database: tuple[str, str | None],
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with migrated_sessions(database, "test", MIGRATIONS) as sessions:
        yield sessions


@pytest.fixture
async def gateway_sessions(
    database: tuple[str, str | None],
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with migrated_sessions(database, "gateway", GATEWAY_MIGRATIONS) as sessions:
        yield sessions


Upgrade = Callable[[type[EventData], str], type[EventData]]


@pytest.fixture
def upgrade(monkeypatch: pytest.MonkeyPatch) -> Upgrade:
    """Declares a ``.v2`` of a contract, as the upgraded code does; forgotten after the
    test (the registry is a copy)."""
    monkeypatch.setattr(contracts.events.base, "_REGISTRY", dict(contracts.events.base._REGISTRY))

    def declare(model: type[EventData], new_type: str) -> type[EventData]:
        class Newer(model):  # type: ignore[valid-type,misc]
            TYPE: ClassVar[str] = new_type

        return Newer

    return declare


def as_version(record: Incoming, event_type: str) -> Incoming:
    return Incoming({**record.headers, "ce_type": event_type}, record.value, record.topic)


def consumed(component: str, topic: str, outcome: str) -> float:
    labels = {"component": component, "topic": topic, "outcome": outcome}
    return REGISTRY.get_sample_value("hub_events_consumed_total", labels) or 0.0


def test_the_stem_of_a_type_is_its_name_without_its_version() -> None:
    assert type_stem(SEND_V2) == type_stem(SEND) == "courrier.outgoing_mail.send_requested"
    assert type_stem("courrier.outgoing_mail.send_requested") is None
    assert type_stem(".v2") is None and type_stem("v2") is None
    assert type_stem("courrier.outgoing_mail.send_requested.v" + "9" * 5000) is None


# -- a service's consumer ------------------------------------------------------------------


async def test_a_newer_version_of_a_handled_type_is_kept_with_the_reason_not_ignored(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    handled: list[str] = []

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        handled.append(event.type)

    component = "versions"
    consumer = EventConsumer(
        component=component, sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    current = incoming(receipt_for("mail-1"))
    newer = as_version(incoming(receipt_for("mail-2")), RECEIPT_V2)
    unrelated = as_version(incoming(receipt_for("mail-3")), UNRELATED)
    topic = DeliveryReceipt.TOPIC
    kept_before, ignored_before = (
        consumed(component, topic, "kept"),
        consumed(component, topic, "ignored"),
    )

    assert await consumer.handle_batch([current, newer, unrelated]) == [
        "handled",
        "kept",
        "ignored",
    ]
    # Read again (a rebalance): kept once.
    assert await consumer.handle_batch([newer, unrelated]) == ["duplicate", "ignored"]

    assert handled == [DeliveryReceipt.TYPE]
    async with sessions() as session:
        [kept] = (await session.scalars(select(RejectedEvent))).all()
    assert (kept.event_id, kept.event_type, kept.tenant, kept.value) == (
        newer.headers["ce_id"],
        RECEIPT_V2,
        TENANT,
        newer.value,
    )
    assert kept.reason == (
        f"{RECEIPT_V2} is not handled here (this service handles {DeliveryReceipt.TYPE}):"
        " upgrade this service, then replay"
    )
    assert consumed(component, topic, "kept") == kept_before + 1
    assert consumed(component, topic, "ignored") == ignored_before + 2


async def test_a_newer_versions_offset_is_committed_only_once_it_is_kept(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        return None

    consumer = EventConsumer(
        component="versions", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    keep = consumer.keep_rejected
    failures = [OperationalError("INSERT", {}, Exception("database is locked"))]

    async def keep_once_the_database_is_back(*args: Any) -> bool:
        if failures:
            raise failures.pop()
        return await keep(*args)

    monkeypatch.setattr(consumer, "keep_rejected", keep_once_the_database_is_back)
    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    kept_at_commits: list[int] = []

    class Fetch(OneFetch):
        async def commit(self, offsets: dict[Any, int]) -> None:
            async with sessions() as session:
                kept_at_commits.append(len((await session.scalars(select(RejectedEvent))).all()))
            await super().commit(offsets)

    newer = as_version(incoming(receipt_for("mail-1")), RECEIPT_V2)
    fetch = Fetch([incoming(receipt_for("mail-0")), newer])
    with pytest.raises(asyncio.CancelledError):
        await consumer._consume(fetch, FetchPacing(fetch, FETCH_MAX_WAIT_MS))

    assert failures == []  # the database was away when it was first kept
    assert fetch.commits == [{TopicPartition(DeliveryReceipt.TOPIC, 0): 42}]
    assert kept_at_commits == [1]


async def test_an_older_version_than_the_service_handles_is_kept_too(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Its producer rolled back after the service dropped .v1: skipped, it was lost too.
    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        raise AssertionError("no handler takes .v1 here")

    consumer = EventConsumer(
        component="versions", sessions=sessions, handlers={RECEIPT_V2: handler}
    )
    older = incoming(receipt_for("mail-1"))
    assert await consumer.handle_batch([older]) == ["kept"]
    async with sessions() as session:
        [kept] = (await session.scalars(select(RejectedEvent))).all()
    assert kept.reason == (
        f"{DeliveryReceipt.TYPE} is not handled here (this service handles {RECEIPT_V2}):"
        " have its sender send it again in a version handled here"
    )


async def test_a_kept_newer_version_is_refused_until_the_service_handles_it_then_replayed(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path, upgrade: Upgrade
) -> None:
    handled: list[tuple[str, str | None]] = []

    async def handler(session: AsyncSession, event: CloudEvent) -> None:
        handled.append((event.type, event.subject))

    old = EventConsumer(
        component="versions", sessions=sessions, handlers={DeliveryReceipt.TYPE: handler}
    )
    newer = as_version(incoming(receipt_for("mail-1")), RECEIPT_V2)
    assert await old.handle_batch([newer]) == ["kept"]
    async with sessions() as session:
        [kept] = (await session.scalars(select(RejectedEvent))).all()

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        app.state.sessions, app.state.relay, app.state.consumer = sessions, None, old
        app.state.tenants = {TENANT: Tenant(TENANT, TENANT, tmp_path / f"{TENANT}.yaml", {})}
        return []

    settings = HubSettings(var_dir=tmp_path / "var")
    app = create_app("test", settings, title="test", description="replays", startup=startup)
    app.include_router(rejected_events_router("test:read", "test:write"))
    operator = {"Authorization": f"Bearer {issue_token(settings, TENANT, ['test:write'])}"}
    replay = f"/v1/rejected-events/{kept.id}/replay"

    async def still_kept() -> list[int]:
        async with sessions() as session:
            return list(await session.scalars(select(RejectedEvent.id)))

    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        refused = await client.post(replay, headers=operator)
        # Not "event-breaks-its-contract", which says the same bytes never replay: they do
        # once the service is upgraded.
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"] == f"{PROBLEM_BASE}event-version-not-handled"
        assert refused.json()["detail"] == kept.reason
        assert await still_kept() == [kept.id] and handled == []

        # Its contract known now, but still no handler here: refused again, not dropped as
        # a "duplicate" of itself.
        receipt_v2 = upgrade(DeliveryReceipt, RECEIPT_V2)
        with pytest.raises(NotHandledHere, match="upgrade this service"):
            await old.replay(kept)
        assert await still_kept() == [kept.id] and handled == []

        # The service upgraded: it handles both versions while producers move over.
        app.state.consumer = EventConsumer(
            component="versions",
            sessions=sessions,
            handlers={DeliveryReceipt.TYPE: handler, receipt_v2.TYPE: handler},
        )
        done = await client.post(replay, headers=operator)
        assert done.status_code == 200, done.text
        assert done.json() == {"event_id": newer.headers["ce_id"], "outcome": "handled"}
    assert handled == [(RECEIPT_V2, "mail-1")]
    assert await inbox_ids(sessions) == {newer.headers["ce_id"]}
    assert await still_kept() == []


# -- the gateway ---------------------------------------------------------------------------


async def test_a_newer_version_of_a_routed_type_ends_dead_and_its_service_is_told(
    gateway_sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A courrier upgraded to .v2 before the gateway: skipped, every mail stayed "sending".
    sessions = gateway_sessions
    connector, clock = FakeConnector(), Clock()
    engine = make_engine(sessions, connector, clock)
    event, elsewhere = mail_event("mail-1"), mail_event("mail-2", tenant="62063")
    newer = (*with_headers(event, {"ce_type": SEND_V2}), "courrier.events")
    # Of a tenant whose file has no route for any version of it: failed at once, as v1's.
    unrouted = (*with_headers(elsewhere, {"ce_type": SEND_V2}), "courrier.events")
    unrelated = (*with_headers(mail_event("mail-3"), {"ce_type": UNRELATED}), "courrier.events")

    for _ in range(2):  # read again after a rebalance: recorded once
        await engine.handle_records([newer, unrouted, unrelated])

    dead, failed = await deliveries(sessions)
    reason = (
        f"{SEND_V2} is not routed here (this gateway routes {SEND}):"
        " upgrade the gateway, then replay the delivery"
    )
    assert (dead.event_id, dead.event_type, dead.route, dead.status, dead.last_error) == (
        event.id,
        SEND_V2,
        "outgoing-mail-ebox",
        "dead",
        reason,
    )
    assert (failed.event_id, failed.route, failed.status) == (elsewhere.id, NO_ROUTE, "failed")
    told = [(r.outcome, r.source_event_id, r.source_event_type) for r in await receipts(sessions)]
    assert told == [("dead", event.id, SEND_V2), ("failed", elsewhere.id, SEND_V2)]
    assert [r.reason for r in await receipts(sessions)] == [reason, failed.last_error]
    assert connector.calls == [] and await kept_records(sessions) == []


async def test_an_older_version_than_the_gateway_routes_ends_dead_too(
    gateway_sessions: async_sessionmaker[AsyncSession], upgrade: Upgrade
) -> None:
    upgrade(OutgoingMailSendRequested, SEND_V2)
    connector = FakeConnector()
    route = Route(TENANT, "outgoing-mail-ebox-v2", SEND_V2, "ebox", "fake")
    engine = DeliveryEngine(
        sessions=gateway_sessions,
        routing=RoutingTable(routes={(TENANT, SEND_V2): [route]}),
        connectors={(TENANT, "ebox"): connector},
        clock=Clock(),
    )
    event = mail_event()  # .v1
    await engine.handle_records([(*as_record(event), "courrier.events")])

    [dead] = await deliveries(gateway_sessions)
    assert (dead.event_id, dead.route, dead.status, dead.last_error) == (
        event.id,
        "outgoing-mail-ebox-v2",
        "dead",
        f"{SEND} is not routed here (this gateway routes {SEND_V2}):"
        " have its service send it again in a version routed here",
    )
    assert [r.outcome for r in await receipts(gateway_sessions)] == ["dead"]
    assert connector.calls == []


async def test_a_newer_version_the_gateway_reads_but_does_not_route_ends_dead_too(
    gateway_sessions: async_sessionmaker[AsyncSession], upgrade: Upgrade
) -> None:
    # The gateway's code upgraded, its tenant's routes not yet: ignored, it was lost too.
    upgrade(OutgoingMailSendRequested, SEND_V2)
    connector = FakeConnector()
    engine = make_engine(gateway_sessions, connector, Clock())
    event = mail_event()
    await engine.handle_records([(*with_headers(event, {"ce_type": SEND_V2}), "courrier.events")])

    [dead] = await deliveries(gateway_sessions)
    assert (dead.event_id, dead.route, dead.status) == (event.id, "outgoing-mail-ebox", "dead")
    assert [r.outcome for r in await receipts(gateway_sessions)] == ["dead"]
    assert connector.calls == []


def with_routes(
    sessions: async_sessionmaker[AsyncSession],
    connector: FakeConnector,
    clock: Clock,
    routes: list[Route],
) -> DeliveryEngine:
    """The gateway with ``routes`` (its tenant files edited), all to the same e-Box account."""
    table: dict[tuple[str, str], list[Route]] = {}
    for route in routes:
        table.setdefault((route.tenant, route.event_type), []).append(route)
    return DeliveryEngine(
        sessions=sessions,
        routing=RoutingTable(routes=table),
        connectors={(route.tenant, "ebox"): connector for route in routes},
        clock=clock,
    )


def not_sent_on(route: str, tenant: str = TENANT) -> str:
    return (
        f"{SEND_V2} is not sent on route {route!r}, which takes {SEND} with a connector that"
        f" does not deliver {SEND_V2}: make that route of tenant {tenant} take {SEND_V2}"
        " (under the same name, the delivery's key), then replay the delivery"
    )


async def test_a_dead_newer_version_is_replayed_once_its_route_takes_that_version(
    gateway_sessions: async_sessionmaker[AsyncSession], upgrade: Upgrade
) -> None:
    sessions = gateway_sessions
    connector, clock = FakeConnector(["ebox-2"]), Clock()
    engine = make_engine(sessions, connector, clock)
    event = mail_event()
    record = (*with_headers(event, {"ce_type": SEND_V2}), "courrier.events")
    await engine.handle_records([record])
    [dead] = await deliveries(sessions)

    # Replayed before the upgrade: read again, dead again, its service told again.
    assert await engine.replay_delivery(dead.idempotency_key, TENANT) is not None
    assert await engine.retry_due() == 1
    [again] = await deliveries(sessions)
    assert (again.status, again.last_error) == ("dead", dead.last_error)
    assert connector.calls == []

    # The gateway's code upgraded and a .v2 route added beside the .v1 one: never sent on
    # the .v1 route (its connector checked for .v1 only), nor moved to another route (its
    # key is what keeps it from being sent twice): dead again, saying what to do.
    upgrade(OutgoingMailSendRequested, SEND_V2)
    engine = with_routes(
        sessions,
        connector,
        clock,
        [
            Route(TENANT, "outgoing-mail-ebox", SEND, "ebox", "fake"),
            Route(TENANT, "outgoing-mail-ebox-v2", SEND_V2, "ebox", "fake"),
        ],
    )
    assert await engine.replay_delivery(dead.idempotency_key, TENANT) is not None
    assert await engine.retry_due() == 1
    [still] = await deliveries(sessions)
    assert (still.status, still.last_error) == ("dead", not_sent_on("outgoing-mail-ebox"))
    assert connector.calls == []

    # Its route made to take .v2 under its name: the replay sends it there, once.
    engine = with_routes(
        sessions, connector, clock, [Route(TENANT, "outgoing-mail-ebox", SEND_V2, "ebox", "fake")]
    )
    assert await engine.replay_delivery(dead.idempotency_key, TENANT) is not None
    assert await engine.retry_due() == 1
    [delivered] = await deliveries(sessions)
    assert (delivered.idempotency_key, delivered.status) == (dead.idempotency_key, "delivered")
    assert delivered.external_reference == "ebox-2"
    assert [(c.event.id, c.event.type, c.route) for c in connector.calls] == [
        (event.id, SEND_V2, "outgoing-mail-ebox")
    ]
    # The mail, failed at the dead receipts, is sent at the last (courrier: failed → sent).
    assert [r.outcome for r in await receipts(sessions)] == ["dead", "dead", "dead", "delivered"]

    # Nothing twice: the record read again is a delivery recorded already.
    await engine.handle_records([record])
    assert await engine.retry_due() == 0
    assert len(connector.calls) == 1


async def test_a_dead_newer_version_goes_on_its_route_once_the_connector_delivers_it(
    gateway_sessions: async_sessionmaker[AsyncSession],
    upgrade: Upgrade,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The gateway upgraded, its connector now delivering both versions: the dead .v2 is
    # replayed on its .v1 route, under its key, and the route still takes .v1 for the rest.
    sessions = gateway_sessions
    connector, clock = FakeConnector(["ebox-2", "ebox-3"]), Clock()
    engine = make_engine(sessions, connector, clock)
    event = mail_event("mail-1")
    await engine.handle_records([(*with_headers(event, {"ce_type": SEND_V2}), "courrier.events")])
    [dead] = await deliveries(sessions)

    upgrade(OutgoingMailSendRequested, SEND_V2)
    monkeypatch.setitem(connector_event_types, "fake", frozenset({SEND, SEND_V2}))
    assert await engine.replay_delivery(dead.idempotency_key, TENANT) is not None
    assert await engine.retry_due() == 1
    older = mail_event("mail-2")
    await engine.handle_records([(*as_record(older), "courrier.events")])
    await engine.retry_due()

    assert [(d.event_id, d.route, d.status) for d in await deliveries(sessions)] == [
        (event.id, "outgoing-mail-ebox", "delivered"),
        (older.id, "outgoing-mail-ebox", "delivered"),
    ]
    assert [(c.event.type, c.route) for c in connector.calls] == [
        (SEND_V2, "outgoing-mail-ebox"),
        (SEND, "outgoing-mail-ebox"),
    ]


async def test_a_tenant_still_on_the_older_version_ends_dead_on_its_routes_not_unrouted(
    gateway_sessions: async_sessionmaker[AsyncSession], upgrade: Upgrade
) -> None:
    # Tenants move to .v2 one by one: another tenant routes .v2 already, this one not yet.
    # Its .v2 request ends dead on its .v1 route, replayable once that route takes .v2, not
    # failed on route "(none)", which no replay can send.
    upgrade(OutgoingMailSendRequested, SEND_V2)
    other = "62063" if TENANT != "62063" else "92137"
    connector, clock = FakeConnector(["ebox-2"]), Clock()
    engine = with_routes(
        gateway_sessions,
        connector,
        clock,
        [
            Route(TENANT, "outgoing-mail-ebox", SEND, "ebox", "fake"),
            Route(other, "outgoing-mail-ebox", SEND_V2, "ebox", "fake"),
        ],
    )
    event = mail_event()
    await engine.handle_records([(*with_headers(event, {"ce_type": SEND_V2}), "courrier.events")])

    [dead] = await deliveries(gateway_sessions)
    assert (dead.route, dead.status) == ("outgoing-mail-ebox", "dead")
    assert dead.route != NO_ROUTE
    assert connector.calls == []

    engine = with_routes(
        gateway_sessions,
        connector,
        clock,
        [
            Route(TENANT, "outgoing-mail-ebox", SEND_V2, "ebox", "fake"),
            Route(other, "outgoing-mail-ebox", SEND_V2, "ebox", "fake"),
        ],
    )
    assert await engine.replay_delivery(dead.idempotency_key, TENANT) is not None
    assert await engine.retry_due() == 1
    assert [r.status for r in await deliveries(gateway_sessions)] == ["delivered"]
    assert [(c.event.tenant, c.event.type) for c in connector.calls] == [(TENANT, SEND_V2)]


async def test_a_dead_newer_version_whose_route_was_removed_waits_as_any_such_delivery(
    gateway_sessions: async_sessionmaker[AsyncSession], upgrade: Upgrade
) -> None:
    # Its .v1 route renamed away: as a delivery whose route is gone (a tenant file being
    # edited), it waits for that route to come back, ROUTE_GONE_FOR; back, taking .v2, it
    # is sent.
    sessions = gateway_sessions
    connector, clock = FakeConnector(["ebox-2"]), Clock()
    event = mail_event()
    await make_engine(sessions, connector, clock).handle_records(
        [(*with_headers(event, {"ce_type": SEND_V2}), "courrier.events")]
    )
    [dead] = await deliveries(sessions)
    upgrade(OutgoingMailSendRequested, SEND_V2)

    renamed = [Route(TENANT, "outgoing-mail-ebox-v2", SEND_V2, "ebox", "fake")]
    engine = with_routes(sessions, connector, clock, renamed)
    assert await engine.replay_delivery(dead.idempotency_key, TENANT) is not None
    assert await engine.retry_due() == 1
    [waiting] = await deliveries(sessions)
    assert (waiting.status, waiting.last_error) == (
        "retrying",
        "route 'outgoing-mail-ebox' is no longer configured",
    )
    assert timedelta(minutes=5) < ROUTE_GONE_FOR
    clock.advance(5 * 60)
    back = [Route(TENANT, "outgoing-mail-ebox", SEND_V2, "ebox", "fake")]
    engine = with_routes(sessions, connector, clock, back)
    assert await engine.retry_due() == 1
    assert [r.status for r in await deliveries(sessions)] == ["delivered"]
    assert [(c.event.type, c.route) for c in connector.calls] == [(SEND_V2, "outgoing-mail-ebox")]


async def test_a_newer_version_with_a_broken_envelope_is_kept_by_the_gateway(
    gateway_sessions: async_sessionmaker[AsyncSession], upgrade: Upgrade
) -> None:
    sessions = gateway_sessions
    engine = make_engine(sessions, FakeConnector(), Clock())
    event, other = mail_event("mail-1"), mail_event("mail-2")
    broken = {"ce_time": "2026-03-02T10:00:00"}  # without its UTC offset
    await engine.handle_records(
        [
            (*with_headers(event, {**broken, "ce_type": SEND_V2}), "courrier.events"),
            (*with_headers(other, {**broken, "ce_type": UNRELATED}), "courrier.events"),
        ]
    )
    [kept] = await kept_records(sessions)
    assert (kept.event_id, kept.event_type) == (event.id, SEND_V2)

    # Its time corrected by an operator: still unreadable to this gateway, it stays kept.
    corrected = await correct_kept_time(sessions, kept.id, event)
    # Refused as "not handled here" (409), not "breaks its contract": the same bytes
    # replay once the gateway reads them.
    with pytest.raises(NotHandledHere, match=f"{SEND_V2} is not routed here"):
        await engine.replay(corrected)
    assert [row.id for row in await kept_records(sessions)] == [kept.id]

    # The gateway upgraded, its tenant's routes not yet: it ends dead, its service told.
    upgrade(OutgoingMailSendRequested, SEND_V2)
    assert await engine.replay(corrected) == "handled"
    [dead] = await deliveries(sessions)
    assert (dead.event_id, dead.status) == (event.id, "dead")
    assert [r.outcome for r in await receipts(sessions)] == ["dead"]
    assert await kept_records(sessions) == []
