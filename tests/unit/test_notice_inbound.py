"""The NOTICe inbound adapter with a fake NOTICe and SQLite; the notice connector against a
fake NOTICe (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import CloudEvent, from_record, new_event
from contracts.events.outside import NoticeNotificationReceived
from contracts.events.urban import NoticeResponseRequested
from gateway.connectors.base import ConnectorContext, Delivery
from gateway.connectors.notice import NoticeConnector, NoticeSettings, create_connector
from gateway.deliveries import MIGRATIONS
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.http import ResponseTooLarge
from gateway.inbound import notice as notice_module
from gateway.inbound.notice import HttpNoticeApi, NoticeError, NoticeInbound, NoticeSource
from gateway.inbound.records import InboundDocument, WaitingItem
from kernel.database import utcnow
from kernel.outbox import OutboxMessage
from kernel.settings import HubSettings
from sandbox import notice as notice_sandbox
from sandbox.recorder import Recorder
from tests.support.clock import Clock
from tests.support.databases import migrated_sessions, sqlite_sessions

INSTANCE, STRANGER = "NOTICE-62063", "NOTICE-00000"
PLAN = b"%PDF-1.7 plan"


REQUEST = httpx.Request("GET", "https://source.test/document")


class FakeNotice:
    name = "fake-notice"

    def __init__(self) -> None:
        self.notifications: dict[str, dict[str, Any]] = {}
        self.contents: dict[tuple[str, str], list[bytes]] = {}
        self.calls: list[str] = []
        #: Notifications listed under another instance than their details name.
        self.listed_under: dict[str, str] = {}

    def add(self, notification_id: str, instance: str = INSTANCE, **changes: Any) -> None:
        self.notifications[notification_id] = {
            "id": notification_id,
            "instanceCode": instance,
            "status": "EN_ATTENTE_REPONSE",
            "receivedOn": "2026-03-02",
            "fileType": "permis_urbanisme",
            "subject": "Maison",
            "applicants": [{"kind": "person", "identifier": "85073003328", "name": "Lambert, S"}],
            "parcels": [{"capakey": "62063A0123/00B000"}],
            "documents": [
                {
                    "id": "D1",
                    "filename": "plan.pdf",
                    "mediaType": "application/pdf",
                    "size": len(PLAN),
                    "sha256": hashlib.sha256(PLAN).hexdigest(),
                }
            ],
            "responses": [],
        } | changes
        self.contents[(notification_id, "D1")] = [PLAN]

    async def list_page(
        self, instance_code: str, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        ids = [
            i
            for i, n in self.notifications.items()
            if self.listed_under.get(i, n["instanceCode"]) == instance_code
        ]
        start = ids.index(after) + 1 if after else 0
        page = ids[start : start + limit]
        return page, (page[-1] if start + limit < len(ids) else None)

    async def notification(self, notification_id: str) -> dict[str, Any]:
        self.calls.append(f"get:{notification_id}")
        return self.notifications[notification_id]

    async def document(self, notification_id: str, document_id: str) -> bytes:
        self.calls.append(f"doc:{notification_id}/{document_id}")
        answers = self.contents[(notification_id, document_id)]
        return answers.pop(0) if len(answers) > 1 else answers[0]


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
def notice() -> FakeNotice:
    return FakeNotice()


def inbound_for(
    sessions: async_sessionmaker[AsyncSession], notice: FakeNotice, clock: Clock | None = None
) -> NoticeInbound:
    return NoticeInbound(
        sessions=sessions,
        sources=[NoticeSource(notice, (INSTANCE, STRANGER))],
        instances={INSTANCE: "62063"},
        page_size=2,
        clock=clock or utcnow,
    )


async def published(sessions: async_sessionmaker[AsyncSession]) -> list[CloudEvent]:
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    return [from_record(row.headers, row.value) for row in rows]


async def records(sessions: async_sessionmaker[AsyncSession]) -> dict[str, InboundDocument]:
    async with sessions() as session:
        rows = (await session.scalars(select(InboundDocument))).all()
    return {row.source_message_id: row for row in rows}


async def test_each_notification_is_published_once_with_its_checked_documents_over_pages(
    sessions: async_sessionmaker[AsyncSession], notice: FakeNotice
) -> None:
    for i in range(5):
        notice.add(f"N{i}")
    inbound = inbound_for(sessions, notice)

    assert await inbound.poll_once() == 5
    assert await inbound.poll_once() == 0  # still listed at NOTICe: nothing fetched again

    events = await published(sessions)
    assert [e.subject for e in events] == [f"N{i}" for i in range(5)]
    data = events[0].data_as(NoticeNotificationReceived)
    assert (events[0].tenant, data.instance_code, data.file_type) == (
        "62063",
        INSTANCE,
        "permis_urbanisme",
    )
    [document] = data.documents
    assert base64.b64decode(document.content_base64) == PLAN
    assert (document.size, document.sha256) == (len(PLAN), hashlib.sha256(PLAN).hexdigest())
    assert notice.calls.count("get:N0") == 1
    rows = await records(sessions)
    assert {(r.channel, r.status, r.reason) for r in rows.values()} == {
        ("notice", "published", None)
    }
    assert rows["N0"].event_id == events[0].id
    assert json.loads(rows["N0"].document)["id"] == "N0"


async def test_a_document_that_breaks_its_metadata_is_fetched_again_then_published_flagged(
    sessions: async_sessionmaker[AsyncSession], notice: FakeNotice
) -> None:
    notice.add("healed")
    notice.contents[("healed", "D1")] = [PLAN[:5], PLAN]  # a broken transfer, then the file
    notice.add("broken")
    notice.contents[("broken", "D1")] = [b"tampered"]

    await inbound_for(sessions, notice).poll_once()

    rows = await records(sessions)
    assert (rows["healed"].status, rows["healed"].reason) == ("published", None)
    assert rows["broken"].status == "published"
    assert rows["broken"].reason is not None
    assert "document D1 (plan.pdf): 8 bytes received, 13 declared; SHA-256" in rows["broken"].reason
    by_subject = {
        e.subject: e.data_as(NoticeNotificationReceived) for e in await published(sessions)
    }
    [document] = by_subject["broken"].documents
    assert base64.b64decode(document.content_base64) == b"tampered"
    assert document.sha256 == hashlib.sha256(b"tampered").hexdigest()
    # The difference travels with the document, for urban to show on the file.
    assert document.metadata_mismatch is not None
    assert document.metadata_mismatch.startswith("8 bytes received, 13 declared; SHA-256")
    [healed] = by_subject["healed"].documents
    assert healed.metadata_mismatch is None
    # Absent, not null, where there is none: urban of before refuses fields it does not know.
    assert "metadata_mismatch" not in healed.model_dump_json()
    assert notice.calls.count("doc:broken/D1") == 2


async def test_unknown_instances_are_unroutable_and_contract_breaks_refused_never_published(
    sessions: async_sessionmaker[AsyncSession], notice: FakeNotice
) -> None:
    notice.add("foreign", instance=STRANGER)
    notice.add("odd", fileType="permis_de_pecher")

    assert await inbound_for(sessions, notice).poll_once() == 2

    rows = await records(sessions)
    assert (rows["foreign"].status, rows["foreign"].tenant) == ("unroutable", None)
    assert "The NOTICe instance 'NOTICE-00000' is no tenant's" in (rows["foreign"].reason or "")
    assert rows["odd"].status == "refused"
    assert "file_type" in (rows["odd"].reason or "")
    assert "85073003328" not in (rows["odd"].reason or "")
    assert await published(sessions) == []


async def test_a_notification_naming_another_instance_than_its_listing_is_kept_refused(
    sessions: async_sessionmaker[AsyncSession], notice: FakeNotice
) -> None:
    # Liège's account lists, under Liège's instance, a notification naming Sambreville's.
    notice.add("N-other", instance="NOTICE-92137")
    notice.listed_under["N-other"] = INSTANCE
    notice.add("N-own")
    inbound = NoticeInbound(
        sessions=sessions,
        sources=[NoticeSource(notice, (INSTANCE,))],
        instances={INSTANCE: "62063", "NOTICE-92137": "92137"},
    )

    assert await inbound.poll_once() == 2
    assert await inbound.poll_once() == 0  # kept: not fetched again at every poll

    assert [(e.tenant, e.subject) for e in await published(sessions)] == [("62063", "N-own")]
    kept = (await records(sessions))["N-other"]
    assert (kept.status, kept.tenant, kept.receiver, kept.event_id) == (
        "refused",
        "62063",  # shown to the tenant whose account fetched it, not to the one it names
        INSTANCE,
        None,
    )
    assert "NOTICe listed it under 'NOTICE-62063' but it names instance 'NOTICE-92137'" in (
        kept.reason or ""
    )


async def test_a_notification_that_fails_to_fetch_waits_shown_and_is_tried_less_often(
    sessions: async_sessionmaker[AsyncSession], notice: FakeNotice
) -> None:
    notice.add("N1")
    notice.add("N2")
    del notice.contents[("N1", "D1")]  # NOTICe fails on it, for a while
    clock = Clock()
    inbound = inbound_for(sessions, notice, clock)

    assert await inbound.poll_once() == 1
    [waiting] = await waiting_items(sessions)
    assert (waiting.source_message_id, waiting.tenant, waiting.tries) == ("N1", "62063", 1)
    assert "NOTICe gave no document of it yet" in waiting.reason
    notice.calls.clear()
    clock.advance(5)
    assert await inbound.poll_once() == 0
    assert notice.calls == []  # not asked again at every poll
    clock.advance(6)
    assert await inbound.poll_once() == 0  # due again; fails again, and waits twice as long
    [waiting] = await waiting_items(sessions)
    assert (waiting.tries, waiting.next_try_at - clock.now) == (2, timedelta(seconds=20))

    notice.contents[("N1", "D1")] = [PLAN]
    clock.advance(21)
    assert await inbound.poll_once() == 1
    assert sorted(e.subject for e in await published(sessions)) == ["N1", "N2"]
    assert await waiting_items(sessions) == []  # taken: no longer waiting


async def waiting_items(sessions: async_sessionmaker[AsyncSession]) -> list[WaitingItem]:
    async with sessions() as session:
        return list((await session.scalars(select(WaitingItem))).all())


# -- the connector ------------------------------------------------------------------------------


def connector(handler: Any) -> NoticeConnector:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    config = {"type": "notice", "base_url": "http://notice/api/v1", "api_key": "k"}
    built = create_connector(ConnectorContext("62063", HubSettings(), http), config)
    assert isinstance(built, NoticeConnector)
    return built


def delivery(state: str = "FINAL", **changes: Any) -> Delivery:
    fields: dict[str, Any] = {
        "file_id": "F-1",
        "notification_id": "N1",
        "instance_code": INSTANCE,
        "state": state,
        "message": "Décision",
        "decision": "refused" if state == "FINAL" else None,
    }
    event = new_event(
        NoticeResponseRequested(**(fields | changes)), tenant="62063", subject="F-1", source="t"
    )
    return Delivery("e1:notice-response", "62063", "notice-response", event, 1)


async def test_the_connector_posts_the_response_with_its_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"responseId": "REP-1"})

    result = await connector(answer).deliver(delivery())

    assert result.external_reference == "REP-1"
    [request] = seen
    assert request.url.path == "/api/v1/notifications/N1/responses"
    assert request.headers["Idempotency-Key"] == "e1:notice-response"
    assert json.loads(request.content) == {
        "state": "FINAL",
        "message": "Décision",
        "decision": "REFUSED",
    }


async def test_a_notification_id_is_one_segment_of_the_path_whatever_it_holds() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"responseId": "REP-1"})

    await connector(answer).deliver(delivery(notification_id="2026/N1?x#y"))

    [request] = seen
    assert request.url.raw_path == b"/api/v1/notifications/2026%2FN1%3Fx%23y/responses"


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (409, PermanentDeliveryError, "N1 is already closed by a FINAL response"),
        (401, RetryableDeliveryError, "refused the hub's API key"),
        (422, PermanentDeliveryError, "HTTP 422: NOTICe: bad"),
        (503, RetryableDeliveryError, "HTTP 503"),
    ],
)
async def test_the_connector_maps_notice_errors(
    status: int, error: type[Exception], reason: str
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"title": "x", "detail": "bad"})

    with pytest.raises(error) as raised:
        await connector(answer).deliver(delivery())

    assert reason in str(raised.value)


async def test_a_final_response_without_a_decision_is_refused_before_sending() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing is sent")

    with pytest.raises(PermanentDeliveryError, match="needs the decision"):
        await connector(answer).deliver(delivery(decision=None))


# -- notifications NOTICe will never give whole, and listings that never end -------------


class GoneDocuments(FakeNotice):
    """Answers 404 for the documents of ``gone``."""

    def __init__(self, gone: set[str]) -> None:
        super().__init__()
        self.gone = gone

    async def document(self, notification_id: str, document_id: str) -> bytes:
        if notification_id in self.gone:
            self.calls.append(f"doc:{notification_id}/{document_id}")
            path = f"/notifications/{notification_id}/documents/{document_id}"
            raise NoticeError(f"GET {path}: HTTP 404", 404)
        if notification_id == "N-flood":  # more than declared: the client stops reading
            self.calls.append(f"doc:{notification_id}/{document_id}")
            raise ResponseTooLarge("an answer over 16777216 bytes", request=REQUEST, status=200)
        return await super().document(notification_id, document_id)


async def test_a_notification_never_given_whole_is_kept_refused_not_asked_for_again(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    notice = GoneDocuments(gone={"N-404"})
    notice.add("N-404")
    notice.add("N-not-a-list", documents=5)
    huge = {"id": "D1", "filename": "plan.pdf", "mediaType": "application/pdf"}
    notice.add("N-huge", documents=[{**huge, "size": 5 * 1024 * 1024, "sha256": "0" * 64}])
    notice.add("N-flood")
    notice.add("N-ok")
    inbound = inbound_for(sessions, notice)

    for _ in range(3):
        await inbound.poll_once()

    kept = await records(sessions)
    assert {n: kept[n].status for n in kept} == {
        "N-404": "refused",
        "N-not-a-list": "refused",
        "N-huge": "refused",
        "N-flood": "refused",
        "N-ok": "published",
    }
    assert "over 16777216 bytes" in (kept["N-flood"].reason or "")
    assert "HTTP 404" in (kept["N-404"].reason or "")
    assert "not a list" in (kept["N-not-a-list"].reason or "")
    assert "5242880 bytes" in (kept["N-huge"].reason or "")
    # Each was read once: the next polls found them recorded; the huge one's document
    # was never downloaded.
    assert sorted(c for c in notice.calls if c.startswith("get:")) == [
        "get:N-404",
        "get:N-flood",
        "get:N-huge",
        "get:N-not-a-list",
        "get:N-ok",
    ]
    assert not [c for c in notice.calls if c.startswith("doc:N-huge")]


class CursorComingBack(FakeNotice):
    """A NOTICe whose listing's last page names a next page: itself."""

    def __init__(self) -> None:
        super().__init__()
        self.listings = 0

    async def list_page(
        self, instance_code: str, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        self.listings += 1
        ids, _ = await super().list_page(instance_code, None, limit)
        return ids, "N-1"


async def test_a_listing_that_comes_back_to_its_cursor_ends_and_the_other_instances_go_on(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    looping, healthy = CursorComingBack(), FakeNotice()
    looping.add("N-1")
    healthy.add("H-1", instance="NOTICE-92137")
    inbound = NoticeInbound(
        sessions=sessions,
        sources=[NoticeSource(looping, (INSTANCE,)), NoticeSource(healthy, ("NOTICE-92137",))],
        instances={INSTANCE: "62063", "NOTICE-92137": "92137"},
    )

    assert await asyncio.wait_for(inbound.poll_once(), 5) == 2

    assert looping.listings == 2  # the second page named the cursor already followed
    assert set(await records(sessions)) == {"N-1", "H-1"}


async def test_a_notification_whose_details_make_too_large_an_event_is_kept_refused(
    sessions: async_sessionmaker[AsyncSession], notice: FakeNotice
) -> None:
    notice.add("N-long", subject="Maison " * 700_000)  # about 4.9 MB of subject
    notice.add("N-ok")

    await inbound_for(sessions, notice).poll_once()

    kept = await records(sessions)
    assert (kept["N-long"].status, kept["N-ok"].status) == ("refused", "published")
    assert "Its details and documents take" in (kept["N-long"].reason or "")
    assert [e.subject for e in await published(sessions)] == ["N-ok"]


# -- one bad notification does not hold its instance --------------------------------------


async def test_a_file_type_with_control_characters_is_kept_refused_and_the_instance_goes_on(
    any_sessions: async_sessionmaker[AsyncSession], notice: FakeNotice
) -> None:
    notice.add("N1", fileType="permis_urbanisme\u0000")
    notice.add("N2")
    notice.add("N3")
    inbound = inbound_for(any_sessions, notice)

    # Kept raw in the row, it failed the batch on PostgreSQL, at every poll, and every
    # later notification of the instance was never reached.
    assert await inbound.poll_once() == 3

    assert [e.subject for e in await published(any_sessions)] == ["N2", "N3"]
    kept = (await records(any_sessions))["N1"]
    assert kept.status == "refused" and "file_type" in (kept.reason or "")
    assert kept.document_type == "permis_urbanisme\N{REPLACEMENT CHARACTER}"


async def test_a_notification_id_the_inbound_log_cannot_keep_is_left_alone(
    any_sessions: async_sessionmaker[AsyncSession], notice: FakeNotice
) -> None:
    notice.add("N\u00001")
    notice.add("N2")

    assert await inbound_for(any_sessions, notice).poll_once() == 1

    assert set(await records(any_sessions)) == {"N2"}
    assert await waiting_items(any_sessions) == []
    assert "get:N\u00001" not in notice.calls  # not fetched at every poll for nothing


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
async def test_a_notification_whose_row_the_database_refuses_waits_and_the_others_are_taken(
    any_sessions: async_sessionmaker[AsyncSession],
    database: tuple[str, str | None],
    notice: FakeNotice,
    monkeypatch: pytest.MonkeyPatch,
    refused_by: str,
) -> None:
    # What the checks missed: the batch failed, and with it every page of the instance.
    for notification_id in ("N1", "N2", "N3"):
        notice.add(notification_id)
    notice.notifications["N2"]["fileType"] = "permis_urbanisme\u0000"
    notice.notifications["N2"]["receivedOn"] = "2026-03-03"
    received_at, plain_text = notice_module._received_at, notice_module.plain_text
    if refused_by.startswith("naive"):
        monkeypatch.setattr(
            notice_module,
            "_received_at",
            lambda day: datetime(2026, 3, 3) if day == "2026-03-03" else received_at(day),
        )
    else:
        monkeypatch.setattr(notice_module, "plain_text", lambda text: text)
    clock = Clock()
    inbound = inbound_for(any_sessions, notice, clock)

    assert await inbound.poll_once() == 2

    assert [e.subject for e in await published(any_sessions)] == ["N1", "N3"]
    [waiting] = await waiting_items(any_sessions)
    assert (waiting.source_message_id, waiting.tenant, waiting.tries) == ("N2", "62063", 1)
    assert waiting.reason.startswith("It could not be recorded: ")

    monkeypatch.setattr(notice_module, "_received_at", received_at)
    monkeypatch.setattr(notice_module, "plain_text", plain_text)
    clock.advance(11)
    assert await inbound.poll_once() == 1
    assert (await records(any_sessions))["N2"].status == "refused"  # its fileType
    assert await waiting_items(any_sessions) == []


async def test_documents_larger_than_declared_are_refused_once_too_many_bytes_came(
    sessions: async_sessionmaker[AsyncSession], notice: FakeNotice
) -> None:
    megabyte = b"x" * (1024 * 1024)
    documents = [
        {"id": f"D{n}", "filename": f"{n}.pdf", "mediaType": "application/pdf", "size": 1}
        | {"sha256": hashlib.sha256(megabyte).hexdigest()}
        for n in range(20)
    ]
    notice.add("N1", documents=documents)
    for n in range(20):
        notice.contents[("N1", f"D{n}")] = [megabyte]

    await inbound_for(sessions, notice).poll_once()

    kept = (await records(sessions))["N1"]
    assert kept.status == "refused"
    assert "5242880 bytes by document D4; one event carries at most 4194304" in (kept.reason or "")
    # Only the declared sizes were checked: all twenty were downloaded, twice each (a
    # broken transfer?), and held, before the notification was refused for their size.
    assert [c for c in notice.calls if c.startswith("doc:")] == [
        *(f"doc:N1/D{n}" for n in range(4) for _ in range(2)),
        "doc:N1/D4",
    ]


async def test_ids_are_each_one_segment_of_notices_paths_whatever_they_hold(
    sessions: async_sessionmaker[AsyncSession], notice: FakeNotice
) -> None:
    notice.add("N/1")
    notice.notifications["N/1"]["documents"][0]["id"] = "plans/1"
    paths: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        # A NOTICe that routes on the path as sent, each id one segment.
        path = request.url.raw_path.decode().split("?")[0]
        paths.append(path)
        if path == f"/api/instances/{INSTANCE}/notifications":
            return httpx.Response(200, json={"items": [{"id": "N/1"}], "next": None})
        if path == "/api/notifications/N%2F1":
            return httpx.Response(200, json=notice.notifications["N/1"])
        if path == "/api/notifications/N%2F1/documents/plans%2F1":
            return httpx.Response(200, content=PLAN)
        return httpx.Response(404, json={"title": "Not found"})

    settings = NoticeSettings(type="notice", base_url="https://notice.test/api", api_key="k")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        source = NoticeSource(HttpNoticeApi(settings, http), (INSTANCE,))
        inbound = NoticeInbound(sessions=sessions, sources=[source], instances={INSTANCE: "62063"})
        assert await inbound.poll_once() == 1

    # Asked for at .../documents/plans/1 (404), it was refused for good, never published.
    assert [e.subject for e in await published(sessions)] == ["N/1"]
    assert paths[1:] == ["/api/notifications/N%2F1", "/api/notifications/N%2F1/documents/plans%2F1"]


async def test_a_notification_id_holding_a_slash_or_a_question_mark_goes_through_the_sandbox(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sandbox = notice_sandbox.Notice()
    notification_id = "PU/2026/7?v2"
    seed = {"filename": "plan.pdf", "content": "plan"}
    sandbox.seed(
        notice_sandbox.SeedNotification.model_validate(
            {"id": notification_id, "instance_code": INSTANCE, "subject": "Maison"}
            | {"documents": [seed], "received_on": "2026-03-02"}
        )
    )
    # A document id holding "/" too (the sandbox names its own "D1"): routed to the document.
    documents = sandbox.notifications[notification_id].documents
    documents["plans/1"] = documents.pop("D1")
    documents["plans/1"].id = "plans/1"
    app = FastAPI()
    app.include_router(notice_sandbox.router(Recorder(), sandbox))
    base_url = "http://sandbox/notice/api/v1"
    api_key = notice_sandbox.API_KEY_PREFIX + "liege"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        settings = NoticeSettings(type="notice", base_url=base_url, api_key=SecretStr(api_key))
        source = NoticeSource(HttpNoticeApi(settings, http), (INSTANCE,))
        inbound = NoticeInbound(sessions=sessions, sources=[source], instances={INSTANCE: "62063"})
        assert await inbound.poll_once() == 1
        config = {"type": "notice", "base_url": base_url, "api_key": api_key}
        connector = create_connector(ConnectorContext("62063", HubSettings(), http), config)
        answered = await connector.deliver(delivery(notification_id=notification_id))

    [event] = await published(sessions)
    [document] = event.data_as(NoticeNotificationReceived).documents
    assert (event.subject, base64.b64decode(document.content_base64)) == (notification_id, b"plan")
    assert answered.external_reference.startswith("REP-")
    assert sandbox.notifications[notification_id].status == "CLOTUREE"


async def test_an_instance_that_cannot_be_listed_is_counted_at_each_poll(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    class Away(FakeNotice):
        async def list_page(
            self, instance_code: str, after: str | None, limit: int
        ) -> tuple[list[str], str | None]:
            raise httpx.ConnectError("refused")

    inbound = inbound_for(sessions, Away())
    failures = {"channel": "notice", "source": INSTANCE}
    before = REGISTRY.get_sample_value("hub_inbound_poll_failures_total", failures) or 0.0

    await inbound.poll_once()

    assert REGISTRY.get_sample_value("hub_inbound_poll_failures_total", failures) == before + 1
