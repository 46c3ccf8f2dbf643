"""The Peppol inbound adapter with a fake access point and SQLite; the peppol_ap connector
against a fake access point (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import CloudEvent, from_record
from contracts.events.peppol import MAX_DOCUMENT_BYTES, PeppolDocumentReceived
from gateway.connectors.base import ConnectorContext, Delivery, connector_types
from gateway.connectors.peppol_ap import (
    INVOICE_RESPONSE_DOCUMENT_TYPE,
    PeppolApConnector,
    PeppolApSettings,
)
from gateway.deliveries import MIGRATIONS
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.http import ResponseTooLarge
from gateway.inbound import peppol as peppol_module
from gateway.inbound.peppol import (
    LISTING_LIMIT,
    RECORD_BATCH,
    FetchedDocument,
    HttpAccessPointInbox,
    InboxItem,
    PeppolInbound,
    inboxes_from,
)
from gateway.inbound.records import InboundDocument, WaitingItem, path_segment
from gateway.main import register_built_in_connectors
from gateway.routing import load_routing
from kernel.database import utcnow
from kernel.outbox import OutboxMessage
from kernel.settings import REPOSITORY_ROOT, HubSettings
from kernel.tenants import load_tenants
from tests.support.clock import Clock
from tests.support.databases import migrated_sessions, sqlite_sessions
from tests.support.invoices import (
    application_response,
    approved_invoice,
    invoice_response_requested,
)

LIEGE, SAMBREVILLE = "0208:0207123407", "0208:0216987614"
PARTICIPANTS = {"62063": LIEGE, "92137": SAMBREVILLE}
SUPPLIER = "0208:0406798006"
INVOICE = b'<?xml version="1.0"?><Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"><ID>F1</ID></Invoice>'  # noqa: E501
INVOICE_TYPE = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice##x::2.1"


REQUEST = httpx.Request("GET", "https://source.test/document")


class FakeInbox:
    """An access point account: messages stay listed until acknowledged or rejected."""

    name = account = "fake-ap"

    def __init__(self) -> None:
        self.documents: dict[str, FetchedDocument] = {}
        self.fetches: list[str] = []
        self.acknowledged: list[str] = []
        self.rejected: list[tuple[str, str, str]] = []
        self.listings = 0
        #: Calls that fail once each, e.g. {"ack:m1", "fetch:m2"}: a crash or a lost answer.
        self.fail_once: set[str] = set()

    def drop(self, message_id: str, receiver: str, content: bytes = INVOICE) -> None:
        item = InboxItem(message_id, SUPPLIER, receiver, INVOICE_TYPE)
        self.documents[message_id] = FetchedDocument(item, content)

    def _maybe_fail(self, call: str) -> None:
        if call in self.fail_once:
            self.fail_once.discard(call)
            raise httpx.ConnectError(f"{call} failed")

    async def list_new(self) -> tuple[list[InboxItem], int]:
        done = set(self.acknowledged) | {r[0] for r in self.rejected}
        self.listings += 1
        items = [d.item for m, d in self.documents.items() if m not in done][:LISTING_LIMIT]
        return items, len(items)

    async def fetch(self, message_id: str) -> FetchedDocument:
        self._maybe_fail(f"fetch:{message_id}")
        self.fetches.append(message_id)
        return self.documents[message_id]

    async def acknowledge(self, message_id: str) -> None:
        self._maybe_fail(f"ack:{message_id}")
        self.acknowledged.append(message_id)

    async def reject(self, message_id: str, reason_code: str, reason: str) -> None:
        self._maybe_fail(f"reject:{message_id}")
        self.rejected.append((message_id, reason_code, reason))


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


@pytest.fixture
def inbox() -> FakeInbox:
    return FakeInbox()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inbound(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, clock: Clock
) -> PeppolInbound:
    return PeppolInbound(sessions=sessions, inboxes=[inbox], participants=PARTICIPANTS, clock=clock)


async def published(sessions: async_sessionmaker[AsyncSession]) -> list[CloudEvent]:
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    return [from_record(row.headers, row.value) for row in rows]


async def records(sessions: async_sessionmaker[AsyncSession]) -> list[InboundDocument]:
    async with sessions() as session:
        return list(
            (await session.scalars(select(InboundDocument).order_by(InboundDocument.id))).all()
        )


# -- a backlog ----------------------------------------------------------------------------


async def test_a_backlog_longer_than_a_listing_is_taken_in_one_poll(
    inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    for number in range(2 * LISTING_LIMIT + 50):
        inbox.drop(f"m{number}", LIEGE)

    assert await inbound.poll_once() == 2 * LISTING_LIMIT + 50

    assert inbox.listings == 3  # two full listings, then the rest; not one per poll
    assert len(inbox.acknowledged) == 2 * LISTING_LIMIT + 50


async def test_a_full_listing_of_which_nothing_was_told_waits_for_the_next_poll(
    inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    for number in range(LISTING_LIMIT + 50):
        inbox.drop(f"m{number}", LIEGE)
    inbox.fail_once = {f"ack:m{number}" for number in range(LISTING_LIMIT)}

    assert await inbound.poll_once() == 0
    assert inbox.listings == 1

    assert await inbound.poll_once() == LISTING_LIMIT + 50
    assert inbox.fetches.count("m0") == 1  # recorded at the first poll, only told at the second


# -- once and only once ---------------------------------------------------------------------


async def test_a_document_for_a_tenant_is_published_in_the_outbox_and_acknowledged(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    inbox.drop("m1", LIEGE)

    assert await inbound.poll_once() == 1

    [event] = await published(sessions)
    data = event.data_as(PeppolDocumentReceived)
    assert (event.tenant, event.subject, event.topic) == ("62063", "m1", "gateway.inbound")
    assert data.access_point_message_id == "m1"
    assert (data.sender.scheme, data.sender.identifier) == ("0208", "0406798006")
    assert (data.receiver.scheme, data.receiver.identifier) == ("0208", "0207123407")
    assert data.document_type == INVOICE_TYPE
    assert base64.b64decode(data.document_base64) == INVOICE
    assert data.sha256 == hashlib.sha256(INVOICE).hexdigest()
    [record] = await records(sessions)
    assert (record.tenant, record.status, record.source_status) == (
        "62063",
        "published",
        "acknowledged",
    )
    assert record.event_id == event.id
    assert inbox.acknowledged == ["m1"]


async def test_each_document_of_a_listing_is_published_in_a_trace_of_its_own(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(peppol_module, "tracer", provider.get_tracer)
    inbound = PeppolInbound(sessions=sessions, inboxes=[inbox], participants=PARTICIPANTS)
    inbox.drop("m1", LIEGE)
    inbox.drop("m2", SAMBREVILLE)

    assert await inbound.poll_once() == 2

    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    # traceparent: 00-<trace id>-<span id>-<flags>
    traces = [row.headers["traceparent"].split("-")[1] for row in rows]
    assert len(traces) == 2 and traces[0] != traces[1]  # Liège's trace shows no Sambreville
    assert all(len(trace) == 32 and set(trace) != {"0"} for trace in traces)
    spans = exporter.get_finished_spans()
    assert [(span.name, dict(span.attributes or {})) for span in spans] == [
        ("peppol inbound", {"hub.peppol.message_id": "m1", "hub.tenant": "62063"}),
        ("peppol inbound", {"hub.peppol.message_id": "m2", "hub.tenant": "92137"}),
    ]
    assert [f"{span.context.trace_id:032x}" for span in spans] == traces


async def test_a_message_listed_again_is_published_once(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    inbox.drop("m1", LIEGE)
    await inbound.poll_once()
    inbox.acknowledged.clear()  # the AP lost the acknowledgement and lists it again

    await inbound.poll_once()

    assert len(await published(sessions)) == 1
    assert inbox.fetches == ["m1"]
    assert inbox.acknowledged == ["m1"]  # told again, nothing else


async def test_a_crash_between_record_and_acknowledgement_only_acknowledges_next_time(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    inbox.drop("m1", SAMBREVILLE)
    inbox.fail_once.add("ack:m1")

    await inbound.poll_once()
    [record] = await records(sessions)
    assert (record.status, record.source_status) == ("published", "pending")
    assert inbox.acknowledged == []

    # A new gateway (same database) polls the still-new message.
    restarted = PeppolInbound(sessions=sessions, inboxes=[inbox], participants=PARTICIPANTS)
    await restarted.poll_once()

    assert len(await published(sessions)) == 1
    assert inbox.fetches == ["m1"]
    assert inbox.acknowledged == ["m1"]
    [record] = await records(sessions)
    assert record.source_status == "acknowledged"


async def test_a_failed_fetch_records_nothing_and_is_fetched_again_later(
    sessions: async_sessionmaker[AsyncSession],
    inbox: FakeInbox,
    inbound: PeppolInbound,
    clock: Clock,
) -> None:
    inbox.drop("m1", LIEGE)
    inbox.drop("m2", LIEGE)
    inbox.fail_once.add("fetch:m1")

    assert await inbound.poll_once() == 1  # m1 waits; m2 is not held behind it
    assert [e.subject for e in await published(sessions)] == ["m2"]
    async with sessions() as session:
        [waiting] = (await session.scalars(select(WaitingItem))).all()
    assert (waiting.source_message_id, waiting.tenant, waiting.tries) == ("m1", "62063", 1)
    assert waiting.reason.startswith("The access point gave no document for it yet")

    await inbound.poll_once()  # shown, and not asked for again at once
    assert [e.subject for e in await published(sessions)] == ["m2"]
    clock.advance(11)
    await inbound.poll_once()
    assert sorted(e.subject for e in await published(sessions)) == ["m1", "m2"]
    async with sessions() as session:
        assert (await session.scalars(select(WaitingItem))).all() == []


async def test_two_gateways_recording_the_same_message_keep_one(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox
) -> None:
    inbox.drop("m1", LIEGE)
    first = PeppolInbound(sessions=sessions, inboxes=[inbox], participants=PARTICIPANTS)
    second = PeppolInbound(sessions=sessions, inboxes=[inbox], participants=PARTICIPANTS)

    # Both fetched before either recorded (a replica each, polling together).
    await first._record(inbox.name, await inbox.fetch("m1"))
    kept = await second._record(inbox.name, await inbox.fetch("m1"))

    assert len(await published(sessions)) == 1
    assert kept.event_id == (await records(sessions))[0].event_id


async def test_a_replica_recording_one_of_a_listing_meanwhile_keeps_its_record_and_the_rest(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox
) -> None:
    replica = PeppolInbound(sessions=sessions, inboxes=[inbox], participants=PARTICIPANTS)

    class RacedInbox(FakeInbox):
        async def fetch(self, message_id: str) -> FetchedDocument:
            fetched = await super().fetch(message_id)
            if message_id == "m1":  # the replica records m1 between our lookup and our record
                await replica._record(self.name, fetched)
            return fetched

    raced = RacedInbox()
    for message_id in ("m1", "m2", "m3"):
        raced.drop(message_id, LIEGE)
    inbound = PeppolInbound(sessions=sessions, inboxes=[raced], participants=PARTICIPANTS)

    assert await inbound.poll_once() == 3

    assert sorted(e.subject for e in await published(sessions)) == ["m1", "m2", "m3"]
    assert [(r.source_message_id, r.source_status) for r in await records(sessions)] == [
        ("m1", "acknowledged"),
        ("m2", "acknowledged"),
        ("m3", "acknowledged"),
    ]


async def test_a_batch_of_a_listing_is_recorded_in_one_transaction_and_marked_told_in_one_more(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    for number in range(RECORD_BATCH - 1):
        inbox.drop(f"m{number}", LIEGE if number % 2 else SAMBREVILLE)
    inbox.drop("m-unroutable", "0208:0999999962")
    commits = 0

    def count(connection: object) -> None:
        nonlocal commits
        commits += 1

    engine = sessions.kw["bind"].sync_engine
    event.listen(engine, "commit", count)
    try:
        assert await inbound.poll_once() == RECORD_BATCH
    finally:
        event.remove(engine, "commit", count)

    assert commits == 2
    assert len(await published(sessions)) == RECORD_BATCH - 1
    told = {r.source_message_id: r.source_status for r in await records(sessions)}
    assert told.pop("m-unroutable") == "rejected"
    assert set(told.values()) == {"acknowledged"}


async def test_a_database_away_during_a_listing_leaves_it_for_the_next_poll(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    inbox.drop("m1", LIEGE)
    engine = sessions.kw["bind"].sync_engine

    def refuse(*args: object) -> None:
        raise OSError("database away")

    event.listen(engine, "begin", refuse)
    try:
        assert await inbound.poll_once() == 0  # logged, not raised: the poll loop goes on
    finally:
        event.remove(engine, "begin", refuse)

    assert inbox.acknowledged == []
    assert await inbound.poll_once() == 1
    assert len(await published(sessions)) == 1


# -- what the adapter does not judge, and what it cannot route --------------------------------


async def test_an_unroutable_document_is_kept_rejected_and_never_published(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    inbox.drop("m9", "0208:0999999962")

    await inbound.poll_once()

    assert await published(sessions) == []
    [record] = await records(sessions)
    assert (record.tenant, record.status, record.source_status) == (
        None,
        "unroutable",
        "rejected",
    )
    assert record.document == INVOICE  # kept for an operator
    [(message_id, code, reason)] = inbox.rejected
    assert (message_id, code) == ("m9", "FD")
    assert "0208:0999999962 is not a participant served by this hub" in reason
    assert reason == record.reason
    assert inbox.acknowledged == []


async def test_a_failed_rejection_is_told_again_without_a_second_record(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    inbox.drop("m9", "9925:be0999999962")
    inbox.fail_once.add("reject:m9")

    await inbound.poll_once()
    await inbound.poll_once()

    assert len(await records(sessions)) == 1
    assert [r[0] for r in inbox.rejected] == ["m9"]
    assert inbox.fetches == ["m9"]


@pytest.mark.parametrize(
    "content", [b"%PDF-1.7 not an invoice", b"<Invoice>" + b"x" * 3_000_000, b""]
)
async def test_documents_are_published_without_being_judged(
    sessions: async_sessionmaker[AsyncSession],
    inbox: FakeInbox,
    inbound: PeppolInbound,
    content: bytes,
) -> None:
    inbox.drop("m1", LIEGE, content)

    await inbound.poll_once()

    [event] = await published(sessions)
    data = event.data_as(PeppolDocumentReceived)
    assert base64.b64decode(data.document_base64) == content
    assert inbox.acknowledged == ["m1"]


async def test_a_document_too_large_for_an_event_is_kept_refused_and_never_published(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    # Its event would exceed Kafka's record limit and block the outbox for good.
    content = b"<Invoice>" + b"x" * MAX_DOCUMENT_BYTES
    inbox.drop("m7", LIEGE, content)

    await inbound.poll_once()

    assert await published(sessions) == []
    [record] = await records(sessions)
    assert (record.status, record.source_status, record.document) == (
        "refused",
        "rejected",
        content,
    )
    [(message_id, code, reason)] = inbox.rejected
    assert (message_id, code) == ("m7", "FD")
    assert f"at most {MAX_DOCUMENT_BYTES} bytes" in reason


async def test_an_answer_larger_than_the_client_reads_is_refused_not_fetched_again(
    sessions: async_sessionmaker[AsyncSession],
    inbox: FakeInbox,
    inbound: PeppolInbound,
    clock: Clock,
) -> None:
    # Listed without its size, and larger than the gateway's client reads (gateway.http).
    inbox.drop("m8", LIEGE)
    inbox.drop("m9", LIEGE)  # its proxy answers with an error page of that size
    fetch = inbox.fetch

    async def flooding(message_id: str) -> FetchedDocument:
        await fetch(message_id)
        status = 200 if message_id == "m8" else 503
        raise ResponseTooLarge("an answer of 40000000 bytes", request=REQUEST, status=status)

    inbox.fetch = flooding  # type: ignore[method-assign]

    for _ in range(2):
        await inbound.poll_once()
        clock.advance(11)

    assert await published(sessions) == []
    assert sorted(inbox.fetches) == ["m8", "m9", "m9"]  # the error page: tried again
    [record] = await records(sessions)
    assert (record.status, record.source_status) == ("refused", "rejected")
    [(message_id, _, reason)] = inbox.rejected
    assert message_id == "m8" and "40000000 bytes" in reason


async def test_receivers_are_matched_without_regard_to_case(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox
) -> None:
    inbound = PeppolInbound(
        sessions=sessions, inboxes=[inbox], participants={"62063": "9925:BE0207123407"}
    )
    inbox.drop("m1", "9925:be0207123407")

    await inbound.poll_once()

    assert [e.tenant for e in await published(sessions)] == ["62063"]


async def test_an_access_point_that_cannot_list_is_tried_at_the_next_poll(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox
) -> None:
    class Away(FakeInbox):
        name = account = "away-ap"

        async def list_new(self) -> tuple[list[InboxItem], int]:
            raise httpx.ConnectError("refused")

    inbox.drop("m1", LIEGE)
    inbound = PeppolInbound(sessions=sessions, inboxes=[Away(), inbox], participants=PARTICIPANTS)
    failures = {"channel": "peppol", "source": "away-ap"}
    before = REGISTRY.get_sample_value("hub_inbound_poll_failures_total", failures) or 0.0

    assert await inbound.poll_once() == 1  # the other account is polled all the same
    await inbound.poll_once()

    # Counted at each poll: a stuck source shows, where /healthz stays green.
    assert REGISTRY.get_sample_value("hub_inbound_poll_failures_total", failures) == before + 2


# -- configuration ----------------------------------------------------------------------------


async def test_the_committed_tenants_poll_one_shared_access_point_account() -> None:
    register_built_in_connectors()
    table = load_routing(
        load_tenants(REPOSITORY_ROOT / "config" / "tenants"), set(connector_types()), environ={}
    )

    assert table.participants == PARTICIPANTS
    assert table.peppol_inboxes == {"62063": "peppol", "92137": "peppol"}
    accounts = [
        PeppolApSettings.model_validate(table.connector_settings[(tenant, name)])
        for tenant, name in table.peppol_inboxes.items()
    ]
    async with httpx.AsyncClient() as http:
        inboxes = inboxes_from(accounts, http)
    assert [inbox.name for inbox in inboxes] == ["http://127.0.0.1:8010/peppol-ap/v1"]
    for tenant, accounting in (("92137", "stesud"), ("62063", "inforius")):
        [approved] = table.routes_for(tenant, "factures.invoice.approved.v1")
        assert approved.connector_type == accounting
        [response] = table.routes_for(tenant, "factures.invoice_response.requested.v1")
        assert response.connector_type == "peppol_ap"


def test_the_access_point_must_be_a_peppol_ap_connector(tmp_path: Path) -> None:
    (tmp_path / "92137.yaml").write_text(
        'tenant: "92137"\nname: X\npeppol:\n  participant: "0208:0216987614"\n'
        "  access_point: ebox\nconnectors:\n  ebox:\n    type: ebox_soap\n"
        "    endpoint: http://x\n",
        encoding="utf-8",
    )

    with pytest.raises(ValueError) as raised:
        load_routing(load_tenants(tmp_path), {"ebox_soap", "peppol_ap"}, environ={})

    assert "peppol.access_point: no connector named 'ebox' of type peppol_ap" in str(raised.value)


# -- the peppol_ap connector ------------------------------------------------------------------


class FakeAccessPoint:
    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = (
            self.answers.pop(0)
            if self.answers
            else httpx.Response(202, json={"messageId": "ap-1", "status": "accepted"})
        )
        if isinstance(answer, Exception):
            raise answer
        return answer


def delivery(event: CloudEvent, key: str = "e1:invoice-response-peppol") -> Delivery:
    return Delivery(
        idempotency_key=key,
        tenant=event.tenant,
        route="invoice-response-peppol",
        event=event,
        attempt=1,
        trace_headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )


@pytest.fixture
def access_point() -> FakeAccessPoint:
    return FakeAccessPoint()


@pytest.fixture
async def connector(access_point: FakeAccessPoint) -> AsyncIterator[PeppolApConnector]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(access_point.handle)) as http:
        register_built_in_connectors()
        built = connector_types()["peppol_ap"](
            ConnectorContext("62063", HubSettings(), http),
            {"type": "peppol_ap", "base_url": "https://ap.test/v1/", "api_key": "k3y"},
        )
        assert isinstance(built, PeppolApConnector)
        yield built


async def test_an_invoice_response_goes_to_the_outbox_with_the_idempotency_key(
    connector: PeppolApConnector, access_point: FakeAccessPoint
) -> None:
    result = await connector.deliver(delivery(invoice_response_requested(code="AP")))

    assert result.external_reference == "ap-1"
    [request] = access_point.requests
    assert (request.method, str(request.url)) == ("POST", "https://ap.test/v1/outbox")
    assert request.headers["Idempotency-Key"] == "e1:invoice-response-peppol"
    assert request.headers["X-Api-Key"] == "k3y"
    assert request.headers["traceparent"].startswith("00-0af7651916cd43dd")
    body = json.loads(request.content)
    assert body["sender"] == "0208:0207123407"
    assert body["receiver"] == "0208:0406798006"
    assert body["documentTypeId"] == INVOICE_RESPONSE_DOCUMENT_TYPE
    assert base64.b64decode(body["document"]) == application_response(code="AP")


@pytest.mark.parametrize(
    ("answer", "error", "reason"),
    [
        (
            httpx.Response(
                422,
                json={"title": "x", "status": 422, "detail": "cbc:CustomizationID: 'x' is not"},
            ),
            PermanentDeliveryError,
            "HTTP 422: Peppol access point: cbc:CustomizationID: 'x' is not",
        ),
        (httpx.Response(401, json={}), RetryableDeliveryError, "refused the hub's API key"),
        (httpx.Response(503, json={"detail": "down"}), RetryableDeliveryError, "HTTP 503"),
        (httpx.ReadTimeout("slow"), RetryableDeliveryError, "timed out"),
        (httpx.Response(202, json={}), RetryableDeliveryError, "no messageId"),
    ],
)
async def test_access_point_answers_map_to_delivery_errors(
    access_point: FakeAccessPoint,
    connector: PeppolApConnector,
    answer: httpx.Response | Exception,
    error: type[Exception],
    reason: str,
) -> None:
    access_point.answers.append(answer)

    with pytest.raises(error) as raised:
        await connector.deliver(delivery(invoice_response_requested()))

    assert reason in str(raised.value)


async def test_other_events_are_refused_before_anything_is_sent(
    connector: PeppolApConnector, access_point: FakeAccessPoint
) -> None:
    with pytest.raises(PermanentDeliveryError) as raised:
        await connector.deliver(delivery(approved_invoice()))

    assert "factures.invoice_response.requested.v1 only" in str(raised.value)
    assert access_point.requests == []


async def test_a_listings_messages_are_fetched_several_at_a_time(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox
) -> None:
    in_flight = 0
    most_in_flight = 0

    class SlowInbox(FakeInbox):
        async def fetch(self, message_id: str) -> FetchedDocument:
            nonlocal in_flight, most_in_flight
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            await asyncio.sleep(0.02)  # a round trip to the access point
            in_flight -= 1
            return await super().fetch(message_id)

    slow = SlowInbox()
    for number in range(10):
        slow.drop(f"m{number}", LIEGE)
    inbound = PeppolInbound(
        sessions=sessions, inboxes=[slow], participants=PARTICIPANTS, concurrency=4
    )

    assert await inbound.poll_once() == 10

    assert most_in_flight == 4
    assert sorted(slow.acknowledged) == sorted(f"m{n}" for n in range(10))
    assert len(await published(sessions)) == 10


# -- ids are the source's own ----------------------------------------------------------


async def test_two_access_points_using_one_message_id_each_have_theirs_published(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox
) -> None:
    other = FakeInbox()
    other.name = other.account = "another-ap"
    inbox.drop("1001", LIEGE)
    other.drop("1001", SAMBREVILLE)
    inbound = PeppolInbound(sessions=sessions, inboxes=[inbox, other], participants=PARTICIPANTS)

    assert await inbound.poll_once() == 2

    # Each account's message was fetched and published; neither taken for the other's.
    assert (inbox.fetches, other.fetches) == (["1001"], ["1001"])
    assert sorted(e.tenant for e in await published(sessions)) == ["62063", "92137"]
    assert (inbox.acknowledged, other.acknowledged) == (["1001"], ["1001"])


async def test_a_message_with_the_id_of_another_channels_document_is_still_published(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    async with sessions() as session, session.begin():
        now = utcnow()
        session.add(
            InboundDocument(
                channel="notice",
                source_message_id="X-42",
                sender="SPW NOTICe",
                receiver="NOTICE-LGE",
                document_type="notice-notification",
                size=2,
                sha256="0" * 64,
                document=b"{}",
                status="published",
                source_status="pending",
                fetched_at=now,
                updated_at=now,
            )
        )
    inbox.drop("X-42", LIEGE)

    assert await inbound.poll_once() == 1

    assert [e.subject for e in await published(sessions)] == ["X-42"]
    assert inbox.acknowledged == ["X-42"]


# -- messages that can never be taken ----------------------------------------------------


class InboxOverHttp:
    """An access point's inbox over HTTP: ``entries`` as listed, ``documents`` as fetched
    (base64 text, or a status the fetch answers); rejected and acknowledged ones leave."""

    def __init__(self, entries: list[Any], documents: dict[str, str | int]) -> None:
        self.entries, self.documents = entries, documents
        self.acknowledged: list[str] = []
        self.rejected: dict[str, str] = {}

    async def handle(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")[3:]  # after /v1/inbox
        if not parts:
            done = {*self.acknowledged, *self.rejected}
            listed = [e for e in self.entries if _listed_id(e) not in done]
            return httpx.Response(200, json={"items": listed[:LISTING_LIMIT]})
        if len(parts) == 2 and parts[1] == "acknowledge":
            self.acknowledged.append(parts[0])
            return httpx.Response(200, json={"messageId": parts[0], "status": "acknowledged"})
        if len(parts) == 2 and parts[1] == "reject":
            self.rejected[parts[0]] = json.loads(request.content)["reason"]
            return httpx.Response(200, json={"messageId": parts[0], "status": "rejected"})
        document = self.documents[parts[0]]
        if isinstance(document, int):
            return httpx.Response(document, json={"title": "no such message"})
        entry = next(e for e in self.entries if _listed_id(e) == parts[0])
        return httpx.Response(200, json={**entry, "document": document})


def _listed_id(entry: Any) -> str | None:
    return str(entry["messageId"]) if isinstance(entry, dict) and "messageId" in entry else None


def entry(message_id: str, **changes: Any) -> dict[str, Any]:
    listed = {
        "messageId": message_id,
        "sender": SUPPLIER,
        "receiver": LIEGE,
        "documentTypeId": INVOICE_TYPE,
        "receivedAt": "2026-03-02T10:00:00+00:00",
    }
    return {**listed, **changes}


async def take_all(
    sessions: async_sessionmaker[AsyncSession], access_point: InboxOverHttp, polls: int = 1
) -> None:
    settings = PeppolApSettings(
        type="peppol_ap", base_url="https://ap.test/v1", api_key=SecretStr("k3y")
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(access_point.handle)) as http:
        inbound = PeppolInbound(
            sessions=sessions,
            inboxes=[HttpAccessPointInbox(settings, http)],
            participants=PARTICIPANTS,
        )
        for _ in range(polls):
            await inbound.poll_once()


async def test_a_message_left_alone_at_the_head_of_the_listing_does_not_slow_the_others(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # An id no log can keep (a control character) stays listed at its source. Counted out
    # of the listing, every listing looked short, and a backlog came 99 messages a poll.
    good = base64.b64encode(INVOICE).decode()
    backlog = [f"m{number}" for number in range(2 * LISTING_LIMIT)]
    entries: list[Any] = [entry("tab\tid"), *(entry(m) for m in backlog)]
    access_point = InboxOverHttp(entries, dict.fromkeys(backlog, good))

    await take_all(sessions, access_point)

    assert access_point.acknowledged == backlog


async def test_messages_that_break_the_contract_are_kept_refused_and_rejected_not_retried(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    good = base64.b64encode(INVOICE).decode()
    entries: list[Any] = [
        entry("no-type", documentTypeId=None),
        entry("odd-date", receivedAt=5),
        entry("long-type", documentTypeId="t" * 501),
        entry("unreadable"),
        entry("gone"),
        entry("too-large", size=MAX_DOCUMENT_BYTES + 1),
        "not-an-object",
        entry("good"),
    ]
    del entries[0]["documentTypeId"]
    # too-large is never fetched: its fetch would fail (503) and be tried at every poll.
    documents: dict[str, str | int] = {
        "unreadable": "***",
        "gone": 404,
        "too-large": 503,
        "good": good,
    }
    access_point = InboxOverHttp(entries, documents)

    await take_all(sessions, access_point)

    assert [e.subject for e in await published(sessions)] == ["good"]
    assert access_point.acknowledged == ["good"]
    # Each of the others is kept for an operator and rejected with its reason: it leaves
    # the listing instead of being asked for at every poll, ahead of the rest.
    assert set(access_point.rejected) == {
        "no-type",
        "odd-date",
        "long-type",
        "unreadable",
        "gone",
        "too-large",
    }
    assert f"at most {MAX_DOCUMENT_BYTES} bytes" in access_point.rejected["too-large"]
    assert "documentTypeId" in access_point.rejected["no-type"]
    assert "at most 500" in access_point.rejected["long-type"]
    assert "no readable document" in access_point.rejected["unreadable"]
    assert "HTTP 404" in access_point.rejected["gone"]
    kept = {r.source_message_id: (r.status, r.source_status) for r in await records(sessions)}
    assert kept == {
        "good": ("published", "acknowledged"),
        **{m: ("refused", "rejected") for m in access_point.rejected},
    }


async def test_participants_that_are_no_scheme_and_identifier_are_refused_not_blocking(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    good = base64.b64encode(INVOICE).decode()
    entries: list[Any] = [
        entry("upis", sender="iso6523-actorid-upis::0208::0406798006"),
        entry("long-id", sender="0208:" + "1" * 205),  # kept (210), but no PeppolEndpoint
        entry("no-scheme", receiver="0207123407"),
        entry("newline", sender=SUPPLIER + "\n"),
        entry("good"),
    ]
    documents: dict[str, str | int] = {_listed_id(e) or "": good for e in entries}
    access_point = InboxOverHttp(entries, documents)

    await take_all(sessions, access_point, polls=2)

    # Staged, the first one failed the batch's transaction at every poll: nothing was taken.
    assert [e.subject for e in await published(sessions)] == ["good"]
    assert access_point.acknowledged == ["good"]
    assert set(access_point.rejected) == {"upis", "long-id", "no-scheme", "newline"}
    assert "sender '0208::0406798006'" in access_point.rejected["upis"]
    assert "receiver '0207123407'" in access_point.rejected["no-scheme"]
    kept = {r.source_message_id: (r.status, r.source_status) for r in await records(sessions)}
    assert kept == {
        "good": ("published", "acknowledged"),
        **{m: ("refused", "rejected") for m in access_point.rejected},
    }


async def test_participants_behind_the_peppol_identifier_scheme_are_read_without_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Access points pass on the participants of the AS4 headers as the policy writes them.
    good = base64.b64encode(INVOICE).decode()
    entries: list[Any] = [
        entry("policy", sender="iso6523-actorid-upis::" + SUPPLIER),
        entry("upper", receiver="ISO6523-ACTORID-UPIS::" + LIEGE),
    ]
    access_point = InboxOverHttp(entries, {"policy": good, "upper": good})

    await take_all(sessions, access_point)

    assert [e.subject for e in await published(sessions)] == ["policy", "upper"]
    assert access_point.acknowledged == ["policy", "upper"]
    assert [(r.sender, r.receiver) for r in await records(sessions)] == [(SUPPLIER, LIEGE)] * 2


async def test_a_message_the_event_contract_refuses_is_refused_and_the_batch_taken(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    # An access point client that does not check participants (a fake, another adapter).
    inbox.drop("m1", LIEGE)
    broken = InboxItem("m2", "iso6523-actorid-upis::0208:0406798006", LIEGE, INVOICE_TYPE)
    inbox.documents["m2"] = FetchedDocument(broken, INVOICE)
    inbox.drop("m3", LIEGE)

    assert await inbound.poll_once() == 3

    assert [e.subject for e in await published(sessions)] == ["m1", "m3"]
    assert inbox.acknowledged == ["m1", "m3"]
    [(message_id, code, reason)] = inbox.rejected
    assert (message_id, code) == ("m2", "FD")
    assert "breaks the hub's event contract (scheme: " in reason
    assert [r.status for r in await records(sessions)] == ["published", "refused", "published"]


async def test_a_message_whose_event_fails_unexpectedly_waits_and_the_others_are_taken(
    sessions: async_sessionmaker[AsyncSession],
    inbox: FakeInbox,
    inbound: PeppolInbound,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for message_id in ("m1", "m2", "m3"):
        inbox.drop(message_id, LIEGE)
    stage = PeppolInbound._stage

    def failing_for_m2(
        session: AsyncSession, tenant: str, fetched: FetchedDocument, sha256: str
    ) -> str:
        if fetched.item.message_id == "m2":
            raise RuntimeError("a bug nobody foresaw")
        return stage(session, tenant, fetched, sha256)

    monkeypatch.setattr(PeppolInbound, "_stage", staticmethod(failing_for_m2))

    assert await inbound.poll_once() == 2

    assert [e.subject for e in await published(sessions)] == ["m1", "m3"]
    assert inbox.acknowledged == ["m1", "m3"]
    assert inbox.rejected == []  # not refused for the hub's own fault: it stays listed
    assert [r.source_message_id for r in await records(sessions)] == ["m1", "m3"]
    async with sessions() as session:
        [waiting] = (await session.scalars(select(WaitingItem))).all()
    assert (waiting.source_message_id, waiting.tenant, waiting.tries) == ("m2", "62063", 1)
    assert "a bug nobody foresaw" in waiting.reason

    monkeypatch.setattr(PeppolInbound, "_stage", staticmethod(stage))
    clock.advance(11)
    assert await inbound.poll_once() == 1
    assert [e.subject for e in await published(sessions)] == ["m1", "m3", "m2"]
    async with sessions() as session:
        assert (await session.scalars(select(WaitingItem))).all() == []


async def test_a_full_listing_of_messages_without_documents_does_not_hide_the_next_one(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    broken = [entry(f"broken-{n:03}") for n in range(LISTING_LIMIT)]
    documents: dict[str, str | int] = {f"broken-{n:03}": "***" for n in range(LISTING_LIMIT)}
    documents["good"] = base64.b64encode(INVOICE).decode()
    access_point = InboxOverHttp([*broken, entry("good")], documents)

    await take_all(sessions, access_point)

    assert [e.subject for e in await published(sessions)] == ["good"]
    assert len(access_point.rejected) == LISTING_LIMIT


async def test_a_listing_is_taken_a_batch_at_a_time_so_its_documents_are_not_all_held(
    sessions: async_sessionmaker[AsyncSession], inbox: FakeInbox, inbound: PeppolInbound
) -> None:
    calls: list[str] = []
    fetch, acknowledge = inbox.fetch, inbox.acknowledge

    async def noted_fetch(message_id: str) -> FetchedDocument:
        calls.append("fetch")
        return await fetch(message_id)

    async def noted_acknowledge(message_id: str) -> None:
        calls.append("ack")
        await acknowledge(message_id)

    inbox.fetch, inbox.acknowledge = noted_fetch, noted_acknowledge  # type: ignore[method-assign]
    for n in range(RECORD_BATCH + 4):
        inbox.drop(f"m{n:02}", LIEGE)

    assert await inbound.poll_once() == RECORD_BATCH + 4

    # The first batch was recorded and told before the next was fetched.
    first, rest = ["fetch"] * RECORD_BATCH + ["ack"] * RECORD_BATCH, ["fetch"] * 4 + ["ack"] * 4
    assert calls == first + rest


async def test_entries_with_control_characters_are_refused_not_blocking_and_times_read_as_utc(
    any_sessions: async_sessionmaker[AsyncSession],
) -> None:
    good = base64.b64encode(INVOICE).decode()
    entries: list[Any] = [
        entry("naive", receivedAt="2026-03-02T10:00:00"),
        entry("nul-sender", sender=SUPPLIER + "\u0000"),
        entry("escape-receiver", receiver=LIEGE + "\u001b"),
        entry("nul-type", documentTypeId=INVOICE_TYPE + "\u0000"),
        entry("nul-id\u0000"),
        entry("good"),
    ]
    documents: dict[str, str | int] = {_listed_id(e) or "": good for e in entries}
    access_point = InboxOverHttp(entries, documents)

    await take_all(any_sessions, access_point, polls=2)

    # A naive receivedAt failed the batch at its commit (the UTC column), and a NUL on
    # PostgreSQL: the listing, given first again at every poll, blocked the inbox for good.
    assert [e.subject for e in await published(any_sessions)] == ["naive", "good"]
    assert access_point.acknowledged == ["naive", "good"]
    assert set(access_point.rejected) == {"nul-sender", "escape-receiver", "nul-type"}
    assert "control characters" in access_point.rejected["nul-type"]
    assert "documentTypeId" in access_point.rejected["nul-type"]
    kept = {r.source_message_id: (r.status, r.source_status) for r in await records(any_sessions)}
    # An id the inbound log cannot keep is left alone (logged), as a too long one is.
    assert kept == {
        "naive": ("published", "acknowledged"),
        "good": ("published", "acknowledged"),
        **{m: ("refused", "rejected") for m in access_point.rejected},
    }
    naive = next(r for r in await records(any_sessions) if r.source_message_id == "naive")
    assert naive.received_at == datetime(2026, 3, 2, 10, tzinfo=UTC)


# The second only where a database refuses it: SQLite keeps a NUL in a VARCHAR.
@pytest.mark.parametrize(
    ("refused_by", "database"),
    [
        ("naive received_at", "sqlite"),
        pytest.param("naive received_at", "postgresql", marks=pytest.mark.postgres),
        pytest.param("NUL in document_type", "postgresql", marks=pytest.mark.postgres),
    ],
    indirect=["database"],
)
async def test_a_message_whose_row_the_database_refuses_waits_and_the_others_are_taken(
    any_sessions: async_sessionmaker[AsyncSession],
    database: tuple[str, str | None],
    inbox: FakeInbox,
    clock: Clock,
    refused_by: str,
) -> None:
    # What the listing's checks missed (an access point client that does not check, a
    # column nobody thought of): the batch failed, not only its row, at every poll.
    for message_id in ("m1", "m2", "m3"):
        inbox.drop(message_id, LIEGE)
    item = inbox.documents["m2"].item
    broken = (
        replace(item, received_at=datetime(2026, 3, 2, 10))
        if refused_by.startswith("naive")
        else replace(item, document_type=INVOICE_TYPE + "\x00")
    )
    inbox.documents["m2"] = FetchedDocument(broken, INVOICE)
    inbound = PeppolInbound(
        sessions=any_sessions, inboxes=[inbox], participants=PARTICIPANTS, clock=clock
    )

    assert await inbound.poll_once() == 2

    assert [e.subject for e in await published(any_sessions)] == ["m1", "m3"]
    assert inbox.acknowledged == ["m1", "m3"]
    assert inbox.rejected == []  # the hub's fault, not the sender's: it stays listed
    assert [r.source_message_id for r in await records(any_sessions)] == ["m1", "m3"]
    async with any_sessions() as session:
        [waiting] = (await session.scalars(select(WaitingItem))).all()
    assert (waiting.source_message_id, waiting.tenant, waiting.tries) == ("m2", "62063", 1)
    assert waiting.reason.startswith("It could not be recorded: ")

    clock.advance(11)
    assert await inbound.poll_once() == 0  # tried again when due, and waits longer
    async with any_sessions() as session:
        [waiting] = (await session.scalars(select(WaitingItem))).all()
    assert waiting.tries == 2
    assert inbox.fetches == ["m1", "m2", "m3", "m2"]


class LaggingInbox(FakeInbox):
    """Acknowledges, but its listing lags behind: told messages are still listed."""

    async def list_new(self) -> tuple[list[InboxItem], int]:
        self.listings += 1
        items = [d.item for d in self.documents.values()][:LISTING_LIMIT]
        return items, len(items)


async def test_a_listing_that_still_names_told_messages_ends_the_poll(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    inbox = LaggingInbox()
    for number in range(LISTING_LIMIT):
        inbox.drop(f"m{number}", LIEGE)
    inbound = PeppolInbound(sessions=sessions, inboxes=[inbox], participants=PARTICIPANTS)

    # Telling them again counted as taking them: the poll listed and acknowledged the same
    # hundred messages, without a pause, for ever, and the other inboxes waited.
    assert await asyncio.wait_for(inbound.poll_once(), 5) == LISTING_LIMIT

    assert inbox.listings == 2
    assert len(inbox.acknowledged) == len(inbox.fetches) == LISTING_LIMIT

    assert await asyncio.wait_for(inbound.poll_once(), 5) == 0  # told again, taken before
    assert inbox.listings == 3
    assert len(inbox.fetches) == LISTING_LIMIT


async def test_an_inbox_that_always_lists_new_messages_ends_the_poll_after_so_many_listings(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Endless(FakeInbox):
        async def list_new(self) -> tuple[list[InboxItem], int]:
            for number in range(LISTING_LIMIT):
                self.drop(f"m{self.listings}-{number}", LIEGE)
            return await super().list_new()

    monkeypatch.setattr(peppol_module, "MAX_LISTINGS", 3)
    inbox = Endless()
    inbound = PeppolInbound(sessions=sessions, inboxes=[inbox], participants=PARTICIPANTS)

    assert await asyncio.wait_for(inbound.poll_once(), 5) == 3 * LISTING_LIMIT

    assert inbox.listings == 3


def test_a_source_id_is_one_segment_of_a_path_whatever_it_holds() -> None:
    ids = ["INV/2026/1", "a?b", "a#b", "..", ".", "a.b", "é x"]
    assert [path_segment(i) for i in ids] == [
        "INV%2F2026%2F1",
        "a%3Fb",
        "a%23b",
        "%2E%2E",
        "%2E",
        "a.b",
        "%C3%A9%20x",
    ]


async def test_message_ids_are_one_segment_of_the_access_points_paths_whatever_they_hold(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ids = ["INV/2026/1", "a?b", "a#b", "..", "."]
    entries = [entry(i) for i in ids] + [entry("to/nobody", receiver="0208:0999999962")]
    good = base64.b64encode(INVOICE).decode()
    fetched: list[str] = []
    told: dict[str, list[str]] = {"acknowledge": [], "reject": []}

    def handle(request: httpx.Request) -> httpx.Response:
        # An access point that routes on the path as sent, each id one segment.
        segments = request.url.raw_path.decode().split("?")[0].split("/")[3:]  # after /v1/inbox
        if not segments:
            done = told["acknowledge"] + told["reject"]
            listed = [e for e in entries if e["messageId"] not in done]
            return httpx.Response(200, json={"items": listed})
        message_id = unquote(segments[0])
        [listed] = [e for e in entries if e["messageId"] == message_id] or [None]
        if listed is None:
            return httpx.Response(404, json={"title": "no such message"})
        if len(segments) == 2 and segments[1] in told:
            told[segments[1]].append(message_id)
            return httpx.Response(200, json={"messageId": message_id, "status": "told"})
        if segments[1:]:
            return httpx.Response(404, json={"title": "no such route"})
        fetched.append(message_id)
        return httpx.Response(200, json={**listed, "document": good})

    settings = PeppolApSettings(
        type="peppol_ap", base_url="https://ap.test/v1", api_key=SecretStr("k3y")
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        inbound = PeppolInbound(
            sessions=sessions,
            inboxes=[HttpAccessPointInbox(settings, http)],
            participants=PARTICIPANTS,
        )
        assert await inbound.poll_once() == len(ids) + 1

    # "INV/2026/1" was fetched at /inbox/INV/2026/1 (404: refused for good), "a#b" at
    # /inbox/a, and ".." acknowledged /v1/acknowledge.
    assert fetched == [*ids, "to/nobody"]
    assert told == {"acknowledge": ids, "reject": ["to/nobody"]}
    assert [e.subject for e in await published(sessions)] == ids


async def test_a_long_broken_entry_is_rejected_with_a_reason_the_contract_takes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    class StrictInbox(InboxOverHttp):
        async def handle(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/reject"):
                reason = json.loads(request.content)["reason"]
                if not 0 < len(reason) <= 1000:  # the contract's Rejection.reason
                    return httpx.Response(400, json={"title": "invalid rejection"})
            return await super().handle(request)

    good = base64.b64encode(INVOICE).decode()
    # fromisoformat's ValueError repeats the text it could not read.
    access_point = StrictInbox([entry("bad", receivedAt="x" * 1200), entry("good")], {})
    access_point.documents = {"good": good}

    await take_all(sessions, access_point, polls=2)

    # Answered 400, it was never told, and was rejected again at every poll.
    assert list(access_point.rejected) == ["bad"]
    kept = {r.source_message_id: r for r in await records(sessions)}
    assert (kept["bad"].status, kept["bad"].source_status) == ("refused", "rejected")
    assert (kept["good"].status, kept["good"].source_status) == ("published", "acknowledged")
    # The entry's text clipped where the reason is made: the sender reads all of it.
    assert access_point.rejected["bad"] == kept["bad"].reason
    assert "an inbox entry breaks the contract: ValueError(" in access_point.rejected["bad"]


async def test_a_reject_reason_is_clipped_to_what_the_access_points_contract_takes() -> None:
    sent: list[Any] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"messageId": "m1", "status": "rejected"})

    settings = PeppolApSettings(
        type="peppol_ap", base_url="https://ap.test/v1", api_key=SecretStr("k3y")
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        await HttpAccessPointInbox(settings, http).reject("m1", "FD", "r" * 1500)

    [body] = sent
    assert len(body["reason"]) == 1000 and body["reason"].endswith("r…")
