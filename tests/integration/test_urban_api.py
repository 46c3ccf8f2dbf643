"""The urban service over real HTTP on 127.0.0.1, on SQLite and PostgreSQL (no broker needed).

Events stay in the outbox here (``background=False``); inbound events are
handed to the service's own consumer (``NoticeKeepingConsumer.handle``, the
code path of a Kafka record) and the deadline watcher runs with a fixed clock.
``test_urban_events`` checks what crosses the real broker.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from contracts.envelope import CloudEvent, from_record, headers_as_text, new_event, to_record
from contracts.events.base import EventData
from contracts.events.gateway import DeliveryReceipt
from contracts.events.meeting import ItemDecided
from contracts.events.outside import NoticeNotificationReceived, OpinionReceived
from contracts.events.urban import (
    DECISION_PARTY_NAME_LENGTH,
    DECISION_TEXT_LENGTH,
    DeadlineWarning,
    DecisionDeadlineExtended,
    DecisionNeeded,
    FileOpened,
    IdentificationRequested,
    NoticeResponseRequested,
    OpinionRequested,
)
from kernel.auth import issue_token
from kernel.consumer import Incoming, RejectedEvent
from kernel.database import create_engine, utcnow
from kernel.days import commune_day
from kernel.migrations import migrate
from kernel.outbox import OutboxMessage
from kernel.settings import HubSettings
from services.meeting import agenda as meeting_agenda
from services.urban import api as urban_api
from services.urban import permits
from services.urban import watcher as watcher_module
from services.urban.configuration import DecisionTarget
from services.urban.consumers import NoticeKeepingConsumer, handlers
from services.urban.deadlines import is_working_day, last_day, opinion_last_day
from services.urban.domain import FileState
from services.urban.main import UrbanOptions, build_app
from services.urban.tables import MIGRATIONS, Opinion, PermitFile, UnprocessedEvent
from services.urban.watcher import DeadlineWatcher
from tests.support.migrations import columns_of, create_table_without
from tests.support.servers import serving

pytestmark = pytest.mark.integration

SAMBREVILLE, LIEGE = "92137", "62063"
INSTANCE = {SAMBREVILLE: "NOTICE-SAM", LIEGE: "NOTICE-LGE"}
ALL_SCOPES = ("urban:read", "urban:write")
NISS = "85073003328"
ENTERPRISE = "0403170701"
PDF = b"%PDF-1.4\n% plan d'implantation\n%%EOF\n"

TENANT_FILE = """\
tenant: "{code}"
name: {name}
notice:
  instance: "{instance}"
services:
  urban:
    warning_days: 5
    decision: {{meeting_config: college, proposing_service: urbanisme, category: urbanisme}}
"""


def commune_today() -> date:
    """The service counts days in Brussels: from 23:00 UTC its today is UTC's tomorrow."""
    return commune_day(utcnow())


def settings_for(hub_settings: HubSettings, tmp_path: Path) -> HubSettings:
    directory = tmp_path / "tenants"
    directory.mkdir(parents=True, exist_ok=True)
    for code, name in ((SAMBREVILLE, "Ville de Sambreville"), (LIEGE, "Ville de Liège")):
        text = TENANT_FILE.format(code=code, name=name, instance=INSTANCE[code])
        (directory / f"{code}.yaml").write_text(text, "utf-8")
    return hub_settings.model_copy(update={"tenants_dir": directory})


@dataclass
class UrbanService:
    app: FastAPI
    http: httpx.AsyncClient
    settings: HubSettings

    def auth(
        self, tenant: str = SAMBREVILLE, scopes: tuple[str, ...] = ALL_SCOPES
    ) -> dict[str, str]:
        token = issue_token(self.settings, tenant, list(scopes))
        return {"Authorization": f"Bearer {token}"}

    async def post(self, path: str, body: Any = None, tenant: str = SAMBREVILLE) -> httpx.Response:
        return await self.http.post(path, json=body, headers=self.auth(tenant))

    async def get(self, path: str, tenant: str = SAMBREVILLE, **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self.auth(tenant))

    def consumer(self) -> NoticeKeepingConsumer:
        return NoticeKeepingConsumer(
            component="urban",
            sessions=self.app.state.sessions,
            handlers=handlers(self.app.state.urban_settings),
        )

    async def deliver(self, event: CloudEvent, *, raw_value: bytes | None = None) -> str:
        """Hand ``event`` to the service's consumer as a Kafka record would bring it."""
        record = to_record(event)
        headers = {name: value.decode() for name, value in record.headers}
        return await self.consumer().handle(headers, raw_value or record.value, record.topic)

    async def deliver_together(self, *events: CloudEvent) -> list[str]:
        """Hand ``events`` to the consumer as one fetch, handled in one transaction."""
        records = [to_record(event) for event in events]
        return await self.consumer().handle_batch(
            [
                Incoming({name: value.decode() for name, value in r.headers}, r.value, r.topic)
                for r in records
            ]
        )

    async def events(self, event_type: str | None = None) -> list[CloudEvent]:
        async with self.app.state.sessions() as session:
            rows = await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
            found = [
                from_record(
                    headers_as_text([(k, v.encode()) for k, v in row.headers.items()]), row.value
                )
                for row in rows.all()
            ]
        return [event for event in found if event_type is None or event.type == event_type]

    async def file_count(self) -> int:
        async with self.app.state.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(PermitFile)) or 0)

    async def open_file(self, tenant: str = SAMBREVILLE, **changes: Any) -> dict[str, Any]:
        response = await self.post("/v1/files", file_body(**changes), tenant)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


def file_body(**changes: Any) -> dict[str, Any]:
    return {
        "file_type": "permis_urbanisme",
        "subject": "Construction d'une maison unifamiliale",
        "received_on": commune_today().isoformat(),
        "applicants": [
            {"kind": "person", "identifier": "85.07.30-033.28", "name": "Lefèvre, Hélène"},
            {"kind": "enterprise", "identifier": f"BE {ENTERPRISE}", "name": "SA Construct"},
        ],
        "parcels": [{"capakey": "92137A0123/00B000", "address": "Rue Haute 1, 5060 Sambreville"}],
        **changes,
    }


NOTICE_DOCUMENT = {
    "document_id": "doc-1",
    "filename": "plans.pdf",
    "media_type": "application/pdf",
    "size": len(PDF),
    "sha256": hashlib.sha256(PDF).hexdigest(),
    "content_base64": base64.b64encode(PDF).decode(),
}


def notification(
    tenant: str = SAMBREVILLE, notification_id: str | None = None, **changes: Any
) -> CloudEvent:
    document = NOTICE_DOCUMENT
    notification_id = notification_id or f"NOT-{uuid.uuid4().hex[:10]}"
    data = NoticeNotificationReceived.model_validate(
        {
            "notification_id": notification_id,
            "instance_code": INSTANCE[tenant],
            "file_type": "permis_urbanisme",
            "received_on": commune_today().isoformat(),
            "subject": "Transformation d'une grange en habitation",
            "applicants": [
                {"kind": "person", "identifier": NISS, "name": "Lefèvre, Hélène"},
            ],
            "parcels": [{"capakey": "92137A0123/00B000", "address": "Rue Haute 1"}],
            "documents": [document],
            **changes,
        }
    )
    return inbound(data, tenant, notification_id)


def inbound(data: EventData, tenant: str, subject: str) -> CloudEvent:
    return new_event(data, tenant=tenant, subject=subject, source="urn:hub:gateway")


@contextlib.asynccontextmanager
async def running(
    settings: HubSettings, database: tuple[str, str | None], **options: Any
) -> AsyncIterator[UrbanService]:
    url, schema = database
    app = build_app(
        settings,
        UrbanOptions(database_url=url, database_schema=schema, **{"background": False, **options}),
    )
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        yield UrbanService(app, http, settings)


@pytest.fixture
async def service(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None]
) -> AsyncIterator[UrbanService]:
    async with running(settings_for(hub_settings, tmp_path), database) as served:
        yield served


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"].endswith("/" + slug), body
    return body


def decided(reference: str, decision: str = "accepted", **changes: Any) -> ItemDecided:
    return ItemDecided.model_validate(
        {
            "item_id": str(uuid.uuid4()),
            "meeting_id": str(uuid.uuid4()),
            "meeting_config": "college",
            "meeting_kind": "college",
            "meeting_date": utcnow().isoformat(),
            "title": "Permis d'urbanisme",
            "decision": decision,
            "decision_text": "Le collège octroie le permis.",
            "decision_number": None if decision == "postponed" else "COL/2026/0042",
            "external_identifier": reference,
            "oversight_applies": False,
            "publication_required": True,
            **changes,
        }
    )


def receipt(source: CloudEvent, outcome: str = "delivered", **changes: Any) -> CloudEvent:
    data = DeliveryReceipt.model_validate(
        {
            "source_event_id": source.id,
            "source_event_type": source.type,
            "route": "route",
            "connector": "connector",
            "idempotency_key": f"{source.id}:route",
            "outcome": outcome,
            "attempts": 1,
            **changes,
        }
    )
    return new_event(data, tenant=source.tenant, subject=source.subject, source="urn:hub:gateway")


# -- the API ------------------------------------------------------------------------------


async def test_a_counter_file_opens_with_its_reference_deadlines_and_identity_request(
    service: UrbanService,
) -> None:
    opened = await service.open_file()
    year = commune_today().year
    assert opened["reference"] == f"PU/{year}/0001"
    assert opened["state"] == "received"
    assert [a["identifier"] for a in opened["applicants"]] == [NISS, ENTERPRISE]
    assert [a["identity_status"] for a in opened["applicants"]] == ["requested", "not_checked"]
    assert opened["next_deadline"] == "completeness"
    assert opened["next_deadline_on"] is not None
    second = await service.open_file(file_type="permis_urbanisme")
    assert second["reference"] == f"PU/{year}/0002"
    [file_opened, _] = await service.events(FileOpened.TYPE)
    assert file_opened.data_as(FileOpened).reference == opened["reference"]
    [identification, _] = await service.events(IdentificationRequested.TYPE)
    request = identification.data_as(IdentificationRequested)
    assert (request.niss, request.declared_last_name, request.declared_first_name) == (
        NISS,
        "Lefèvre",
        "Hélène",
    )
    assert identification.subject == opened["id"]


async def test_invalid_capakeys_and_identifiers_get_their_own_problems(
    service: UrbanService,
) -> None:
    bad_parcel = file_body(parcels=[{"capakey": "92137A123/00B000"}])
    body = problem(await service.post("/v1/files", bad_parcel), 422, "invalid-capakey")
    assert "e.g. 25015A0123/00B000" in body["detail"]
    bad_niss = file_body(
        applicants=[{"kind": "person", "identifier": "85073003329", "name": "X, Y"}]
    )
    problem(await service.post("/v1/files", bad_niss), 422, "invalid-national-number")
    bad_company = file_body(
        applicants=[{"kind": "enterprise", "identifier": "0403170702", "name": "SA"}]
    )
    problem(await service.post("/v1/files", bad_company), 422, "invalid-enterprise-number")
    problem(await service.post("/v1/files", file_body(file_type="permis")), 422, "invalid-request")
    assert await service.file_count() == 0


async def test_tenants_are_walls_and_scopes_are_checked(service: UrbanService) -> None:
    opened = await service.open_file()
    problem(await service.get(f"/v1/files/{opened['id']}", LIEGE), 404, "not-found")
    assert (await service.get("/v1/files", LIEGE)).json()["total"] == 0
    reader = service.auth(scopes=("urban:read",))
    response = await service.http.post(f"/v1/files/{opened['id']}/complete", headers=reader)
    problem(response, 403, "forbidden")
    problem(await service.http.get("/v1/files"), 401, "unauthorized")


async def test_the_procedure_runs_from_completeness_through_opinions_to_the_decision_request(
    service: UrbanService,
) -> None:
    opened = await service.open_file()
    path = f"/v1/files/{opened['id']}"
    early = await service.post(
        f"{path}/opinions", {"body": "SRI", "subject": "x", "due_on": "2030-01-01"}
    )
    problem(early, 409, "file-state-forbids")
    complete = await service.post(f"{path}/complete")
    assert complete.status_code == 200, complete.text
    assert complete.json()["state"] == "complete"
    decision_due = {d["name"]: d["due_on"] for d in complete.json()["deadlines"]}["decision"]
    due_on = (commune_today() + timedelta(days=30)).isoformat()
    requested = []
    for body in ("SRI", "FD"):
        response = await service.post(
            f"{path}/opinions", {"body": body, "subject": "Avis sur la demande", "due_on": due_on}
        )
        assert response.status_code == 201, response.text
        requested.append(response.json()["id"])
    after = (await service.get(path)).json()
    # The delegated official's opinion turns the 30 days into 115.
    assert {d["name"]: d["due_on"] for d in after["deadlines"]}["decision"] > decision_due
    problem(await service.post(f"{path}/request-decision"), 409, "opinions-pending")
    events = await service.events(OpinionRequested.TYPE)
    assert [e.data_as(OpinionRequested).body for e in events] == ["SRI", "FD"]
    assert events[0].data_as(OpinionRequested).reference == opened["reference"]

    for opinion_id, body in zip(requested, ("SRI", "FD"), strict=True):
        data = OpinionReceived(
            opinion_id=opinion_id,
            file_id=opened["id"],
            body=body,
            verdict="favourable",
            text="Avis favorable.",
            given_on=commune_today(),
        )
        assert await service.deliver(inbound(data, SAMBREVILLE, opened["id"])) == "handled"
    ready = (await service.get(path)).json()
    assert ready["state"] == "awaiting_decision"
    assert [o["verdict"] for o in ready["opinions"]] == ["favourable", "favourable"]
    [needed] = await service.events(DecisionNeeded.TYPE)
    request = needed.data_as(DecisionNeeded)
    assert (request.meeting_config, request.external_identifier) == ("college", opened["reference"])
    assert request.category == "urbanisme"
    assert request.concerned_party is not None and request.concerned_party.identifier == NISS
    # A counter file has no NOTICe notification to answer.
    response = await service.post(f"{path}/notice-responses", {"message": "Info"})
    problem(response, 409, "not-a-notice-file")


async def test_a_change_racing_another_change_of_the_file_is_refused_409_not_500(
    service: UrbanService, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = await service.open_file()
    declare_complete = permits.declare_complete

    async def racing(session: Any, settings: Any, permit: PermitFile, now: datetime) -> None:
        # The applicant's identity check comes in between the clerk's read and write.
        async with service.app.state.sessions() as other, other.begin():
            (await other.get_one(PermitFile, permit.id)).updated_at = utcnow()
        await declare_complete(session, settings, permit, now)

    monkeypatch.setattr(permits, "declare_complete", racing)
    response = await service.post(f"/v1/files/{file['id']}/complete")

    assert response.status_code == 409, response.text
    assert response.json()["type"].endswith("/concurrent-file-change")
    assert (await service.get(f"/v1/files/{file['id']}")).json()["state"] == "received"
    assert await service.events(NoticeResponseRequested.TYPE) == []
    monkeypatch.undo()
    assert (await service.post(f"/v1/files/{file['id']}/complete")).status_code == 200


async def test_an_opinion_for_an_unknown_request_is_kept(service: UrbanService) -> None:
    data = OpinionReceived(
        opinion_id="nope",
        file_id="nofile",
        body="SRI",
        verdict="unfavourable",
        text="Non.",
        given_on=commune_today(),
    )
    event = inbound(data, SAMBREVILLE, "nofile")
    assert await service.deliver(event) == "handled"
    [kept] = (await service.get("/v1/unprocessed-notifications")).json()
    assert (kept["event_id"], kept["problem"]) == (event.id, "not-found")


# -- NOTICe -------------------------------------------------------------------------------


async def test_a_notification_opens_one_file_even_when_delivered_twice(
    service: UrbanService,
) -> None:
    event = notification()
    assert await service.deliver(event) == "handled"
    assert await service.deliver(event) == "duplicate"
    # The gateway fetched it again: another event, the same notification.
    data = event.data_as(NoticeNotificationReceived)
    assert await service.deliver(inbound(data, SAMBREVILLE, data.notification_id)) == "handled"
    assert await service.file_count() == 1
    [opened] = await service.events(FileOpened.TYPE)
    file_id = opened.data_as(FileOpened).file_id
    file = (await service.get(f"/v1/files/{file_id}")).json()
    assert file["notice_notification_id"] == data.notification_id
    assert file["documents"][0]["sha256"] == hashlib.sha256(PDF).hexdigest()
    document = await service.get(f"/v1/files/{file_id}/documents/doc-1")
    assert document.content == PDF


async def test_a_document_unlike_its_notice_metadata_is_kept_and_shown_on_the_file(
    service: UrbanService,
) -> None:
    difference = f"8 bytes received, 13 declared; SHA-256 {'a' * 64} received, {'0' * 64} declared"
    event = notification(documents=[{**NOTICE_DOCUMENT, "metadata_mismatch": difference}])
    assert await service.deliver(event) == "handled"
    [opened] = await service.events(FileOpened.TYPE)
    file = (await service.get(f"/v1/files/{opened.data_as(FileOpened).file_id}")).json()
    [document] = file["documents"]
    assert (document["document_id"], document["metadata_mismatch"]) == ("doc-1", difference)


async def test_complete_sends_partial_the_decision_sends_final_and_closes_the_notification(
    service: UrbanService,
) -> None:
    event = notification()
    await service.deliver(event)
    [opened] = await service.events(FileOpened.TYPE)
    file_id, reference = opened.data_as(FileOpened).file_id, opened.data_as(FileOpened).reference
    assert (await service.post(f"/v1/files/{file_id}/complete")).status_code == 200
    [partial] = await service.events(NoticeResponseRequested.TYPE)
    response = partial.data_as(NoticeResponseRequested)
    assert (response.state, response.instance_code) == ("PARTIAL", INSTANCE[SAMBREVILLE])
    assert response.notification_id == event.data_as(NoticeNotificationReceived).notification_id
    assert (await service.post(f"/v1/files/{file_id}/request-decision")).status_code == 200

    postponed = inbound(decided(reference, "postponed"), SAMBREVILLE, "item")
    assert await service.deliver(postponed) == "handled"
    assert (await service.get(f"/v1/files/{file_id}")).json()["state"] == "awaiting_decision"

    assert await service.deliver(inbound(decided(reference), SAMBREVILLE, "item")) == "handled"
    file = (await service.get(f"/v1/files/{file_id}")).json()
    assert (file["state"], file["decision"], file["decision_number"]) == (
        "granted",
        "granted",
        "COL/2026/0042",
    )
    assert file["notice_state"] == "closed"
    assert file["next_deadline"] == "notification"
    [_, final] = await service.events(NoticeResponseRequested.TYPE)
    assert (
        final.data_as(NoticeResponseRequested).state,
        final.data_as(NoticeResponseRequested).decision,
    ) == (
        "FINAL",
        "granted",
    )
    # No more responses once closed: by the API, by a second decision, by NOTICe news.
    response_problem = problem(
        await service.post(f"/v1/files/{file_id}/notice-responses", {"message": "Encore"}),
        409,
        "notice-notification-closed",
    )
    assert "FINAL" in response_problem["detail"]
    again = inbound(decided(reference, "refused"), SAMBREVILLE, "item")
    await service.deliver(again)
    news = notification(notification_id=response.notification_id)
    await service.deliver(news)
    kept = {
        row["event_id"]: row["problem"]
        for row in (await service.get("/v1/unprocessed-notifications")).json()
    }
    assert kept == {again.id: "file-state-forbids", news.id: "notice-notification-closed"}
    # The SPW's receipt of the FINAL response is the decision's notification.
    assert await service.deliver(receipt(final)) == "handled"
    file = (await service.get(f"/v1/files/{file_id}")).json()
    assert file["notified_on"] is not None and file["next_deadline"] is None
    assert [r["delivery"] for r in file["notice_responses"]] == ["pending", "delivered"]


@pytest.mark.parametrize(
    ("changes", "slug"),
    [
        ({"instance_code": "NOTICE-LGE"}, "wrong-notice-instance"),
        ({"applicants": []}, "no-applicant"),
        ({"parcels": []}, "no-parcel"),
        ({"received_on": "9999-12-30"}, "received-in-the-future"),
        ({"received_on": "1066-10-14"}, "received-too-long-ago"),
        ({"notification_id": "N" * 101}, "unfit-text"),
        (
            {"applicants": [{"kind": "person", "identifier": NISS, "name": "L" * 301}]},
            "unfit-text",
        ),
        ({"subject": "Grange\x00"}, "unfit-text"),
        ({"documents": [NOTICE_DOCUMENT, NOTICE_DOCUMENT]}, "duplicate-document"),
        (
            {"documents": [{**NOTICE_DOCUMENT, "media_type": "application/pdf\r\nX-Evil: 1"}]},
            "document-mismatch",
        ),
        ({"documents": [{**NOTICE_DOCUMENT, "filename": "f" * 256}]}, "unfit-text"),
        ({"documents": [{**NOTICE_DOCUMENT, "metadata_mismatch": "x\x00"}]}, "unfit-text"),
        (
            {"applicants": [{"kind": "person", "identifier": "85073003329", "name": "A, B"}]},
            "invalid-national-number",
        ),
        (
            {
                "documents": [
                    {
                        "document_id": "d",
                        "filename": "f.pdf",
                        "media_type": "application/pdf",
                        "size": 3,
                        "sha256": hashlib.sha256(PDF).hexdigest(),
                        "content_base64": base64.b64encode(PDF).decode(),
                    }
                ]
            },
            "document-mismatch",
        ),
        (
            {
                "documents": [
                    {
                        "document_id": "d",
                        "filename": "f.pdf",
                        "media_type": "application/pdf",
                        "size": len(PDF),
                        "sha256": "0" * 64,
                        "content_base64": base64.b64encode(PDF).decode(),
                    }
                ]
            },
            "document-mismatch",
        ),
    ],
)
async def test_a_notification_that_cannot_be_applied_is_kept_and_the_next_one_goes_through(
    service: UrbanService, changes: dict[str, Any], slug: str
) -> None:
    bad = notification(**changes)
    assert await service.deliver(bad) == "handled"
    [kept] = (await service.get("/v1/unprocessed-notifications")).json()
    assert (kept["event_id"], kept["problem"]) == (bad.id, slug)
    assert (
        kept["data"]["notification_id"] == bad.data_as(NoticeNotificationReceived).notification_id
    )
    assert await service.file_count() == 0
    assert (await service.get("/v1/unprocessed-notifications", LIEGE)).json() == []
    assert await service.deliver(notification()) == "handled"
    assert await service.file_count() == 1


@pytest.mark.parametrize(
    ("field", "value", "slug"),
    [
        ("file_type", "permis_de_batir", "unknown-file-type"),
        ("parcels", [{"capakey": "92137A0123/00B00", "address": None}], "invalid-capakey"),
    ],
)
async def test_a_notification_breaking_its_contract_is_kept_not_dropped(
    service: UrbanService, field: str, value: Any, slug: str
) -> None:
    event = notification()
    raw = event.data.model_dump(mode="json")
    raw[field] = value

    assert await service.deliver(event, raw_value=json.dumps(raw).encode()) == "kept"
    assert await service.deliver(event, raw_value=json.dumps(raw).encode()) == "duplicate"
    [kept] = (await service.get("/v1/unprocessed-notifications")).json()
    assert (kept["event_id"], kept["problem"]) == (event.id, slug)
    assert kept["data"][field] == value
    assert await service.file_count() == 0


async def test_a_notification_whose_envelope_breaks_the_contract_is_kept_too(
    service: UrbanService,
) -> None:
    record = to_record(notification())
    headers = {name: value.decode() for name, value in record.headers}
    broken = {**headers, "ce_id": "n" * 300, "ce_subject": "N\x00-1"}

    assert await service.consumer().handle(broken, record.value, record.topic) == "kept"

    async with service.app.state.sessions() as session:
        [kept] = (await session.scalars(select(RejectedEvent))).all()
    # Under no id: one the envelope refuses tells no record from another.
    assert kept.event_id is None and kept.headers["ce_id"] == "n" * 300
    assert "ce_id is 1 to 64 characters" in kept.reason
    assert await service.file_count() == 0


async def test_a_decision_for_another_tenants_file_is_kept_not_applied(
    service: UrbanService,
) -> None:
    opened = await service.open_file(LIEGE)
    event = inbound(decided(opened["reference"]), SAMBREVILLE, "item")
    assert await service.deliver(event) == "handled"
    [kept] = (await service.get("/v1/unprocessed-notifications")).json()
    assert (kept["event_id"], kept["problem"]) == (event.id, "not-found")
    assert (await service.get(f"/v1/files/{opened['id']}", LIEGE)).json()["state"] == "received"
    # An item of another service (no file reference) is none of urban's business.
    other = inbound(decided("TRAV/2026/17"), SAMBREVILLE, "item")
    assert await service.deliver(other) == "handled"
    assert len((await service.get("/v1/unprocessed-notifications")).json()) == 1


async def test_only_the_decision_the_file_asked_for_is_applied(service: UrbanService) -> None:
    # Complete, with the fire service's opinion pending: not ready for a decision.
    file = await completed(service)
    path = f"/v1/files/{file['id']}"
    due_on = (commune_today() + timedelta(days=30)).isoformat()
    opinion = {"body": "SRI", "subject": "Avis", "due_on": due_on}
    assert (await service.post(f"{path}/opinions", opinion)).status_code == 201
    early = inbound(decided(file["reference"]), SAMBREVILLE, "item")
    assert await service.deliver(early) == "handled"
    # Asked for, but an item of the council that names the file is not its decision.
    ready = await completed(service)
    assert (await service.post(f"/v1/files/{ready['id']}/request-decision")).status_code == 200
    council = inbound(
        decided(ready["reference"], meeting_config="council", meeting_kind="council"),
        SAMBREVILLE,
        "item",
    )
    assert await service.deliver(council) == "handled"

    kept = (await service.get("/v1/unprocessed-notifications")).json()
    assert sorted((k["event_id"], k["problem"]) for k in kept) == sorted(
        [(early.id, "file-state-forbids"), (council.id, "decision-from-another-meeting")]
    )
    assert (await service.get(path)).json()["state"] == "complete"
    assert (await service.get(f"/v1/files/{ready['id']}")).json()["state"] == "awaiting_decision"


async def test_a_decision_comes_from_the_meeting_asked_even_if_the_tenant_changed_since(
    service: UrbanService,
) -> None:
    file = await completed(service)
    assert (await service.post(f"/v1/files/{file['id']}/request-decision")).status_code == 200
    # The tenant now sends its files to the council; this one was sent to the college.
    urban_settings = service.app.state.urban_settings
    urban_settings[SAMBREVILLE] = dataclasses.replace(
        urban_settings[SAMBREVILLE], decision=DecisionTarget(meeting_config="council")
    )

    assert await service.deliver(inbound(decided(file["reference"]), SAMBREVILLE, "item")) == (
        "handled"
    )

    assert (await service.get(f"/v1/files/{file['id']}")).json()["state"] == "granted"
    assert (await service.get("/v1/unprocessed-notifications")).json() == []


# -- identities ---------------------------------------------------------------------------


async def test_the_registers_answer_flags_a_declared_identity_that_differs(
    service: UrbanService, caplog: pytest.LogCaptureFixture
) -> None:
    opened = await service.open_file()
    [request] = await service.events(IdentificationRequested.TYPE)
    answer = {
        "status": "found",
        "last_name": "LEFEVRE",
        "first_names": "Helene Marie",
        "birth_date": "1985-07-30",
    }
    assert await service.deliver(receipt(request, answer=answer)) == "handled"
    file = (await service.get(f"/v1/files/{opened['id']}")).json()
    assert file["applicants"][0]["identity_status"] == "matched"
    assert file["identity_flagged"] is False

    other = await service.open_file()
    [_, second] = await service.events(IdentificationRequested.TYPE)
    wrong = {"status": "found", "last_name": "Dupont", "first_names": "Hélène"}
    with caplog.at_level("INFO"):
        await service.deliver(receipt(second, answer=wrong))
    file = (await service.get(f"/v1/files/{other['id']}")).json()
    assert file["applicants"][0]["identity_status"] == "mismatch"
    assert file["applicants"][0]["registered_name"] == "Dupont, Hélène"
    assert file["identity_flagged"] is True
    flagged = (await service.get("/v1/files", identity_flagged=True)).json()
    assert [f["id"] for f in flagged["items"]] == [other["id"]]
    assert NISS not in caplog.text


async def test_an_identity_answer_and_news_of_the_notification_apply_in_one_transaction(
    service: UrbanService,
) -> None:
    # The identity answer reads the file without its documents; news of the notification,
    # in the same fetch and so the same session, still sees and extends them.
    first = notification()
    notification_id = first.data_as(NoticeNotificationReceived).notification_id
    assert await service.deliver(first) == "handled"
    [request] = await service.events(IdentificationRequested.TYPE)
    [document] = first.data_as(NoticeNotificationReceived).documents
    plan = document.model_copy(update={"document_id": "doc-2", "filename": "coupe.pdf"})
    news = notification(notification_id=notification_id, documents=[document, plan])
    answer = {"status": "found", "last_name": "LEFEVRE", "first_names": "Hélène"}

    outcomes = await service.deliver_together(receipt(request, answer=answer), news)

    assert outcomes == ["handled", "handled"]
    [file] = (await service.get("/v1/files")).json()["items"]
    view = (await service.get(f"/v1/files/{file['id']}")).json()
    assert view["applicants"][0]["identity_status"] == "matched"
    assert [d["document_id"] for d in view["documents"]] == ["doc-1", "doc-2"]
    assert (await service.get("/v1/unprocessed-notifications")).json() == []


async def test_a_notification_and_its_news_in_one_fetch_make_one_file(
    service: UrbanService,
) -> None:
    # The batch's files are written at its commit: the news finds the file not yet written.
    first = notification()
    data = first.data_as(NoticeNotificationReceived)
    [document] = data.documents
    plan = document.model_copy(update={"document_id": "doc-2", "filename": "coupe.pdf"})
    news = notification(notification_id=data.notification_id, documents=[document, plan])
    other = notification()

    assert await service.deliver_together(first, news, other) == ["handled"] * 3

    assert await service.file_count() == 2
    listed = (await service.get("/v1/files")).json()["items"]
    references = sorted(f["reference"] for f in listed)
    year = commune_today().year
    assert references == [f"PU/{year}/0001", f"PU/{year}/0002"]
    async with service.app.state.sessions() as session:
        file = await permits.one_file(
            session, first.tenant, "notice_notification_id", data.notification_id
        )
        assert file is not None
        assert [d.document_id for d in file.documents] == ["doc-1", "doc-2"]


# -- the deadline watcher ---------------------------------------------------------------------


async def test_the_watcher_warns_approaching_then_exceeded_once_each(
    service: UrbanService,
) -> None:
    received = commune_today()
    due = last_day(received, 20)
    opened = await service.open_file(received_on=received.isoformat())
    untouched = await completed(service)  # its next deadline, the decision's, is months away
    day = datetime.combine(due - timedelta(days=5), time(12), tzinfo=UTC)

    def watcher_on(moment: datetime) -> DeadlineWatcher:
        return DeadlineWatcher(
            service.app.state.sessions, None, service.app.state.urban_settings, clock=lambda: moment
        )

    assert await watcher_on(day - timedelta(days=1)).check_once() == 0
    assert await watcher_on(day).check_once() == 1
    assert await watcher_on(day).check_once() == 0
    assert await watcher_on(day + timedelta(days=5)).check_once() == 0
    assert await watcher_on(day + timedelta(days=6)).check_once() == 1

    async def warnings() -> list[DeadlineWarning]:
        return [e.data_as(DeadlineWarning) for e in await service.events(DeadlineWarning.TYPE)]

    assert untouched["reference"] not in {w.reference for w in await warnings()}
    # Later, decisions draw near (the other's; this one's, deemed complete): not this check.
    await watcher_on(day + timedelta(days=30)).check_once()
    assert [
        (w.reference, w.deadline, w.level, w.due_on)
        for w in await warnings()
        if (w.reference, w.deadline) == (opened["reference"], "completeness")
    ] == [
        (opened["reference"], "completeness", "approaching", due),
        (opened["reference"], "completeness", "exceeded", due),
    ]
    listed = (await service.get("/v1/files", deadline_before=due.isoformat())).json()
    assert [f["id"] for f in listed["items"]] == [opened["id"]]


async def test_a_body_asked_twice_is_warned_for_each_opinion_and_holds_no_file_back(
    service: UrbanService, monkeypatch: pytest.MonkeyPatch
) -> None:
    due_on = commune_today() + timedelta(days=10)
    while not is_working_day(due_on):  # else its last day moves on, and it is not exceeded yet
        due_on += timedelta(days=1)
    twice = await completed(service)
    for _ in range(2):  # the fire service asked twice: the plans changed meanwhile
        response = await service.post(
            f"/v1/files/{twice['id']}/opinions",
            {"body": "SRI", "subject": "Avis sur les plans", "due_on": due_on.isoformat()},
        )
        assert response.status_code == 201, response.text
    broken = await service.open_file(received_on=(due_on - timedelta(days=20)).isoformat())
    later = await service.open_file(received_on=(due_on - timedelta(days=20)).isoformat())
    moment = datetime.combine(due_on + timedelta(days=1), time(12), tzinfo=UTC)
    watcher = DeadlineWatcher(
        service.app.state.sessions, None, service.app.state.urban_settings, clock=lambda: moment
    )
    # One file's check fails (a bug, a row the database refuses): the others go on.
    facts_of = permits.facts_of

    def failing_for_one(file: Any) -> Any:
        if file.id == broken["id"]:
            raise RuntimeError("this file cannot be checked")
        return facts_of(file)

    monkeypatch.setattr(watcher_module, "facts_of", failing_for_one)

    await watcher.check_once()

    warnings = [e.data_as(DeadlineWarning) for e in await service.events(DeadlineWarning.TYPE)]
    warned = {(w.reference, w.deadline, w.level) for w in warnings}
    assert warned >= {
        (twice["reference"], "opinion:SRI", "exceeded"),
        (twice["reference"], "opinion:SRI (2)", "exceeded"),
        (later["reference"], "completeness", "exceeded"),
    }
    assert broken["reference"] not in {w.reference for w in warnings}


# -- the college's extension of the decision deadline -----------------------------------------


def extension(file: dict[str, Any]) -> str:
    return f"/v1/files/{file['id']}/decision-deadline-extension"


REASON = {"reason": "Complément d'instruction sur l'impact paysager"}


async def completed(service: UrbanService, **changes: Any) -> dict[str, Any]:
    file = await service.open_file(**changes)
    response = await service.post(f"/v1/files/{file['id']}/complete")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def decision_due(file: dict[str, Any]) -> date:
    return date.fromisoformat({d["name"]: d["due_on"] for d in file["deadlines"]}["decision"])


async def test_the_college_extends_the_decision_deadline_once_by_30_days(
    service: UrbanService,
) -> None:
    today = commune_day(utcnow())
    file = await completed(service)
    due = decision_due(file)
    assert due == last_day(today, 30)

    def watcher_on(day: date) -> DeadlineWatcher:
        moment = datetime.combine(day, time(12), tzinfo=UTC)
        return DeadlineWatcher(
            service.app.state.sessions, None, service.app.state.urban_settings, clock=lambda: moment
        )

    assert await watcher_on(due - timedelta(days=5)).check_once() == 1  # decision approaching
    reader = service.auth(scopes=("urban:read",))
    problem(await service.http.post(extension(file), json=REASON, headers=reader), 403, "forbidden")

    response = await service.post(extension(file), REASON)

    assert response.status_code == 200, response.text
    extended = response.json()
    new_due = last_day(today, 60)
    assert extended["decision_extended_on"] == today.isoformat()
    assert decision_due(extended) == new_due
    assert (extended["next_deadline"], extended["next_deadline_on"]) == (
        "decision",
        new_due.isoformat(),
    )
    [event] = await service.events(DecisionDeadlineExtended.TYPE)
    assert event.subject == file["id"]
    assert event.data_as(DecisionDeadlineExtended) == DecisionDeadlineExtended(
        file_id=file["id"],
        reference=file["reference"],
        extended_on=today,
        previous_due_on=due,
        due_on=new_due,
        reason=REASON["reason"],
    )
    # The new last day is warned about in its turn.
    assert await watcher_on(new_due - timedelta(days=5)).check_once() == 1
    warnings = [e.data_as(DeadlineWarning) for e in await service.events(DeadlineWarning.TYPE)]
    assert [(w.deadline, w.level, w.due_on) for w in warnings] == [
        ("decision", "approaching", due),
        ("decision", "approaching", new_due),
    ]

    again = problem(
        await service.post(extension(file), REASON), 409, "decision-deadline-already-extended"
    )
    assert today.isoformat() in again["detail"]
    assert len(await service.events(DecisionDeadlineExtended.TYPE)) == 1


async def received(service: UrbanService) -> dict[str, Any]:
    return await service.open_file()


async def environmental(service: UrbanService) -> dict[str, Any]:
    return await completed(service, file_type="permis_environnement_1")


async def decided_file(service: UrbanService) -> dict[str, Any]:
    file = await completed(service)
    assert (await service.post(f"/v1/files/{file['id']}/request-decision")).status_code == 200
    decision = inbound(decided(file["reference"]), SAMBREVILLE, "item")
    assert await service.deliver(decision) == "handled"
    return file


async def past_its_deadline(service: UrbanService) -> dict[str, Any]:
    file = await completed(service)
    long_ago = commune_day(utcnow()) - timedelta(days=90)
    async with service.app.state.sessions() as session, session.begin():
        (await session.get_one(PermitFile, file["id"])).complete_on = long_ago
    return file


@pytest.mark.parametrize(
    ("make_file", "slug", "said"),
    [
        (environmental, "decision-deadline-not-extendable", "permis_environnement_1"),
        (received, "decision-clock-not-started", "not yet found complete"),
        (decided_file, "file-already-decided", "was decided on"),
        (past_its_deadline, "decision-deadline-passed", "ended on"),
    ],
)
async def test_an_extension_the_rule_forbids_is_refused_and_changes_nothing(
    service: UrbanService,
    make_file: Callable[[UrbanService], Awaitable[dict[str, Any]]],
    slug: str,
    said: str,
) -> None:
    file = await make_file(service)
    before = (await service.get(f"/v1/files/{file['id']}")).json()

    refused = problem(await service.post(extension(file), REASON), 409, slug)

    assert said in refused["detail"]
    assert (await service.get(f"/v1/files/{file['id']}")).json() == before
    assert await service.events(DecisionDeadlineExtended.TYPE) == []


async def test_a_refused_late_extension_names_the_deadline_that_passed(
    service: UrbanService,
) -> None:
    file = await past_its_deadline(service)
    due = decision_due((await service.get(f"/v1/files/{file['id']}")).json())
    refused = problem(await service.post(extension(file), REASON), 409, "decision-deadline-passed")
    assert refused["due_on"] == due.isoformat()
    assert due.isoformat() in refused["detail"]


async def test_an_extension_needs_a_reason(service: UrbanService) -> None:
    file = await completed(service)
    problem(await service.post(extension(file), {"reason": ""}), 422, "invalid-request")
    problem(await service.post(extension(file), {}), 422, "invalid-request")
    assert (await service.get(f"/v1/files/{file['id']}")).json()["decision_extended_on"] is None


async def test_a_database_made_before_extensions_gets_the_column(
    database: tuple[str, str | None],
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    try:
        await create_table_without(engine, schema, PermitFile, {"decision_extended_on"})
        assert await migrate(engine, "urban", MIGRATIONS[:2], schema=schema) == 2
        assert await migrate(engine, "urban", MIGRATIONS, schema=schema) == len(MIGRATIONS)
        assert "decision_extended_on" in await columns_of(engine, PermitFile.__tablename__)
    finally:
        await engine.dispose()


# -- kept events: what the listing shows, and their replay ------------------------------------


async def test_the_kept_listing_shows_a_documents_metadata_not_its_bytes(
    service: UrbanService,
) -> None:
    bad = notification(documents=[{**NOTICE_DOCUMENT, "size": 3}])
    assert await service.deliver(bad) == "handled"
    [kept] = (await service.get("/v1/unprocessed-notifications")).json()
    [document] = kept["data"]["documents"]
    assert document == {k: v for k, v in NOTICE_DOCUMENT.items() if k != "content_base64"} | {
        "size": 3
    }


async def test_a_kept_notification_is_replayed_once_its_cause_is_fixed(
    service: UrbanService,
) -> None:
    misaddressed = notification(instance_code="NOTICE-SAM-2")
    assert await service.deliver(misaddressed) == "handled"
    async with service.app.state.sessions() as session:
        kept = await session.get_one(UnprocessedEvent, misaddressed.id)
        assert kept.data is not None and "content_base64" not in kept.data["documents"][0]
    replay_path = f"/v1/unprocessed-notifications/{misaddressed.id}/replay"
    keyed = {**service.auth(SAMBREVILLE), "Idempotency-Key": "replay-1"}
    # Not fixed yet: the same rule's Problem, and the event stays kept; the refusal keeps
    # no Idempotency-Key, so that the same request may be sent again once it is fixed.
    problem(await service.http.post(replay_path, headers=keyed), 422, "wrong-notice-instance")
    assert len((await service.get("/v1/unprocessed-notifications")).json()) == 1
    # Another tenant cannot see or replay it.
    problem(await service.post(replay_path, tenant=LIEGE), 404, "not-found")

    settings = service.app.state.urban_settings
    settings[SAMBREVILLE] = dataclasses.replace(
        settings[SAMBREVILLE], notice_instance="NOTICE-SAM-2"
    )
    replayed = await service.http.post(replay_path, headers=keyed)
    assert replayed.status_code == 200, replayed.text
    assert "idempotent-replayed" not in replayed.headers
    file = (await service.get(f"/v1/files/{replayed.json()['file_id']}")).json()
    assert file["reference"] == replayed.json()["reference"]
    # Its document's bytes, kept apart from the data the listing reads, came back with it.
    document = await service.get(f"/v1/files/{file['id']}/documents/doc-1")
    assert document.content == PDF
    assert file["notice_notification_id"] == misaddressed.subject
    assert (await service.get("/v1/unprocessed-notifications")).json() == []
    problem(await service.post(replay_path), 404, "not-found")
    assert await service.file_count() == 1


async def test_a_replay_that_breaks_another_rule_names_it_and_keeps_the_event(
    service: UrbanService,
) -> None:
    event = answer({"id": "no-such-file"}, "o-1", "SRI", "favourable", "Favorable.")
    assert await service.deliver(event) == "handled"
    async with service.app.state.sessions() as session, session.begin():
        kept = await session.get_one(UnprocessedEvent, event.id)
        kept.data = {**(kept.data or {}), "verdict": "maybe"}  # as a broken record is kept
    response = await service.post(f"/v1/unprocessed-notifications/{event.id}/replay")
    body = problem(response, 422, "contract-violation")
    assert "verdict" in body["detail"]
    [still] = (await service.get("/v1/unprocessed-notifications")).json()
    assert (still["event_id"], still["problem"]) == (event.id, "contract-violation")


# -- opinions: who answers, answers again, or never ------------------------------------------


async def opinion_asked(
    service: UrbanService, body: str = "SRI", due_on: date | None = None
) -> tuple[dict[str, Any], str]:
    file = await completed(service)
    due = due_on or commune_today() + timedelta(days=30)
    response = await service.post(
        f"/v1/files/{file['id']}/opinions",
        {"body": body, "subject": "Avis sur les plans", "due_on": due.isoformat()},
    )
    assert response.status_code == 201, response.text
    return file, response.json()["id"]


def answer(file: dict[str, Any], opinion_id: str, body: str, verdict: str, text: str) -> CloudEvent:
    data = OpinionReceived.model_validate(
        {
            "opinion_id": opinion_id,
            "file_id": file["id"],
            "body": body,
            "verdict": verdict,
            "text": text,
            "given_on": commune_today().isoformat(),
        }
    )
    return inbound(data, SAMBREVILLE, file["id"])


async def test_an_answer_from_another_body_is_kept_not_recorded(service: UrbanService) -> None:
    file, opinion_id = await opinion_asked(service, body="FD")
    wrong = answer(file, opinion_id, "DNF", "favourable", "Avis favorable.")
    assert await service.deliver(wrong) == "handled"
    [kept] = (await service.get("/v1/unprocessed-notifications")).json()
    assert (kept["event_id"], kept["problem"]) == (wrong.id, "opinion-from-another-body")
    after = (await service.get(f"/v1/files/{file['id']}")).json()
    assert (after["state"], after["opinions"][0]["verdict"]) == ("complete", None)
    # The body's own answer, its code written otherwise, is recorded.
    right = answer(file, opinion_id, " fd ", "favourable", "Avis favorable.")
    assert await service.deliver(right) == "handled"
    assert (await service.get(f"/v1/files/{file['id']}")).json()["state"] == "awaiting_decision"


async def test_a_second_different_answer_is_kept_the_same_answer_again_is_not(
    service: UrbanService,
) -> None:
    file, opinion_id = await opinion_asked(service)
    first = answer(file, opinion_id, "SRI", "favourable", "Avis favorable.")
    assert await service.deliver(first) == "handled"
    again = answer(file, opinion_id, "SRI", "favourable", "Avis favorable.")
    assert await service.deliver(again) == "handled"
    assert (await service.get("/v1/unprocessed-notifications")).json() == []
    corrected = answer(file, opinion_id, "SRI", "unfavourable", "Avis rectifié: défavorable.")
    assert await service.deliver(corrected) == "handled"
    [kept] = (await service.get("/v1/unprocessed-notifications")).json()
    assert (kept["event_id"], kept["problem"]) == (corrected.id, "opinion-already-recorded")
    assert "favourable" in kept["reason"] and "unfavourable" in kept["reason"]
    opinions = (await service.get(f"/v1/files/{file['id']}")).json()["opinions"]
    assert [o["verdict"] for o in opinions] == ["favourable"]


async def test_an_opinion_past_its_due_day_is_deemed_favourable_when_the_decision_is_asked(
    service: UrbanService,
) -> None:
    # Days went by: the due day whose last day, moved to a working day, was the last before
    # today (a Monday's is the Friday: due on the Sunday, the body had all of Monday).
    past_due = commune_today() - timedelta(days=1)
    while opinion_last_day(past_due) >= commune_today():
        past_due -= timedelta(days=1)
    file, late_id = await opinion_asked(service, due_on=commune_today())
    async with service.app.state.sessions() as session, session.begin():
        (await session.get_one(Opinion, late_id)).due_on = past_due
    path = f"/v1/files/{file['id']}"
    on_time = await service.post(
        f"{path}/opinions",
        {"body": "DNF", "subject": "Avis", "due_on": (commune_today() + timedelta(1)).isoformat()},
    )
    # One not due yet still holds the decision back; the one past its day no longer does.
    body = problem(await service.post(f"{path}/request-decision"), 409, "opinions-pending")
    assert body["pending"] == ["DNF"]
    assert "deemed favourable" in body["detail"]
    on_time_answer = answer(file, on_time.json()["id"], "DNF", "favourable", "Favorable.")
    assert await service.deliver(on_time_answer) == "handled"
    asked = await service.post(f"{path}/request-decision")
    assert asked.status_code == 200, asked.text
    assert asked.json()["state"] == "awaiting_decision"
    deemed = {o["body"]: o for o in asked.json()["opinions"]}["SRI"]
    assert (deemed["verdict"], deemed["received_on"]) == (
        "deemed_favourable",
        commune_today().isoformat(),
    )
    assert "réputé favorable" in deemed["text"]
    [needed] = await service.events(DecisionNeeded.TYPE)
    assert "SRI: deemed_favourable" in needed.data_as(DecisionNeeded).description
    # The body's answer, too late, is kept for the clerk rather than written over it.
    late = answer(file, late_id, "SRI", "unfavourable", "Défavorable.")
    assert await service.deliver(late) == "handled"
    [kept] = (await service.get("/v1/unprocessed-notifications")).json()
    assert kept["problem"] == "opinion-already-recorded"


async def test_body_codes_are_kept_in_capitals_and_capakeys_take_only_ascii_digits(
    service: UrbanService,
) -> None:
    file, _ = await opinion_asked(service, body=" sri ")
    opinions = (await service.get(f"/v1/files/{file['id']}")).json()["opinions"]
    assert [o["body"] for o in opinions] == ["SRI"]
    spaced = await service.post(
        f"/v1/files/{file['id']}/opinions",
        {"body": "F D", "subject": "Avis", "due_on": commune_today().isoformat()},
    )
    problem(spaced, 422, "invalid-request")
    arabic = file_body(parcels=[{"capakey": "\u0669\u0662\u0661\u0663\u0667A0123/00B000"}])
    problem(await service.post("/v1/files", arabic), 422, "invalid-capakey")
    future = file_body(received_on=(commune_today() + timedelta(days=2)).isoformat())
    problem(await service.post("/v1/files", future), 422, "received-in-the-future")


async def test_complements_restart_the_completeness_check_from_their_day(
    service: UrbanService,
) -> None:
    received = commune_today() - timedelta(days=5)
    file = await service.open_file(received_on=received.isoformat())
    path = f"/v1/files/{file['id']}"
    problem(await service.post(f"{path}/complements", {}), 409, "file-state-forbids")
    incomplete = await service.post(f"{path}/incomplete", {"missing_documents": ["plan"]})
    assert incomplete.status_code == 200, incomplete.text
    too_early = {"received_on": (commune_today() - timedelta(days=1)).isoformat()}
    problem(
        await service.post(f"{path}/complements", too_early),
        422,
        "complements-before-their-request",
    )
    tomorrow = {"received_on": (commune_today() + timedelta(days=1)).isoformat()}
    problem(await service.post(f"{path}/complements", tomorrow), 422, "received-in-the-future")

    completed_file = await service.post(f"{path}/complements", {})
    assert completed_file.status_code == 200, completed_file.text
    view = completed_file.json()
    assert (view["state"], view["received_on"]) == ("received", received.isoformat())
    assert view["complements_received_on"] == commune_today().isoformat()
    due = {d["name"]: d["due_on"] for d in view["deadlines"]}
    assert due["completeness"] == last_day(commune_today(), 20).isoformat()


async def test_news_of_an_incomplete_notifications_file_brings_its_complements(
    service: UrbanService,
) -> None:
    received = commune_today() - timedelta(days=5)
    first = notification(received_on=received.isoformat())
    assert await service.deliver(first) == "handled"
    [file] = (await service.get("/v1/files")).json()["items"]
    path = f"/v1/files/{file['id']}"
    assert (await service.post(f"{path}/incomplete", {"missing_documents": ["plan"]})).is_success
    news = notification(
        notification_id=first.subject,
        received_on=received.isoformat(),
        documents=[{**NOTICE_DOCUMENT, "document_id": "doc-2"}],
    )
    assert await service.deliver(news) == "handled"
    view = (await service.get(path)).json()
    assert (view["state"], view["received_on"]) == ("received", received.isoformat())
    assert view["complements_received_on"] == commune_today().isoformat()
    due = {d["name"]: d["due_on"] for d in view["deadlines"]}
    assert due["completeness"] == last_day(commune_today(), 20).isoformat()


async def test_news_a_file_cannot_take_as_complements_leave_its_documents_as_they_were(
    service: UrbanService,
) -> None:
    # An incomplete file its complements cannot restart (here its list of missing documents
    # dated tomorrow, as a clerk's typo kept from before that rule): the news is kept for the
    # clerk, and none of its documents is taken meanwhile.
    received = commune_today() - timedelta(days=5)
    first = notification(received_on=received.isoformat())
    assert await service.deliver(first) == "handled"
    [file] = (await service.get("/v1/files")).json()["items"]
    async with service.app.state.sessions() as session, session.begin():
        legacy = await session.get_one(PermitFile, file["id"])
        legacy.state = FileState.INCOMPLETE
        legacy.missing_asked_on = commune_today() + timedelta(days=1)
    news = notification(
        notification_id=first.subject,
        received_on=received.isoformat(),
        documents=[{**NOTICE_DOCUMENT, "document_id": "doc-2"}],
    )
    assert await service.deliver(news) == "handled"
    [kept] = (await service.get("/v1/unprocessed-notifications")).json()
    assert kept["problem"] == "complements-before-their-request"
    view = (await service.get(f"/v1/files/{file['id']}")).json()
    assert [d["document_id"] for d in view["documents"]] == [NOTICE_DOCUMENT["document_id"]]


async def test_a_file_deemed_complete_takes_no_list_of_missing_documents(
    service: UrbanService,
) -> None:
    # Its check's 20 days passed unanswered: complete since, its decision days running.
    received = commune_today() - timedelta(days=40)
    file = await service.open_file(received_on=received.isoformat())
    path = f"/v1/files/{file['id']}"
    late = await service.post(f"{path}/incomplete", {"missing_documents": ["plan"]})
    body = problem(late, 409, "deemed-complete")
    assert body["since"] == last_day(received, 20).isoformat()
    assert (await service.get(path)).json()["state"] == "received"
    assert (await service.post(f"{path}/complete")).status_code == 200


async def test_days_out_of_the_procedures_order_are_refused(service: UrbanService) -> None:
    file = await completed(service)
    path = f"/v1/files/{file['id']}"
    yesterday = (commune_today() - timedelta(days=1)).isoformat()
    past = {"body": "SRI", "subject": "Avis", "due_on": yesterday}
    problem(await service.post(f"{path}/opinions", past), 422, "opinion-due-in-the-past")
    early = {"starts_on": yesterday}  # found complete today
    problem(await service.post(f"{path}/inquiry", early), 422, "inquiry-before-completeness")
    after = (await service.get(path)).json()
    assert (after["opinions"], after["inquiry_starts_on"]) == ([], None)


# -- what the decision request, an opinion request and the FINAL response may meet ----------


async def test_a_decision_request_fits_the_item_meeting_makes_of_it(service: UrbanService) -> None:
    # NOTICe bounds neither a name to the item's nor the parcels' addresses to its texts.
    event = notification(
        applicants=[{"kind": "person", "identifier": NISS, "name": "Lefèvre" + "-x" * 120}],
        parcels=[{"capakey": "92137A0123/00B000", "address": "R" * DECISION_TEXT_LENGTH}],
    )
    assert await service.deliver(event) == "handled"
    [opened] = await service.events(FileOpened.TYPE)
    path = f"/v1/files/{opened.data_as(FileOpened).file_id}"
    assert (await service.post(f"{path}/complete")).status_code == 200

    asked = await service.post(f"{path}/request-decision")

    assert asked.status_code == 200, asked.text
    [needed] = await service.events(DecisionNeeded.TYPE)
    request = needed.data_as(DecisionNeeded)
    party = request.concerned_party
    assert party is not None and party.name is not None
    assert (len(party.name), party.name[-1]) == (DECISION_PARTY_NAME_LENGTH, "…")
    assert request.description is not None
    assert (len(request.description), request.description[-1]) == (DECISION_TEXT_LENGTH, "…")
    # What meeting checks before it makes the item (services.meeting.urban_requests).
    meeting_agenda.check_new_item(
        meeting_agenda.NewItem(
            title=request.title,
            proposing_service=request.proposing_service,
            category=request.category,
            description=request.description,
            motivation=request.motivation,
            external_identifier=request.external_identifier,
            concerned_party=request.concerned_party,
        )
    )


async def test_the_decision_may_be_asked_again_until_it_comes(service: UrbanService) -> None:
    file = await completed(service)
    path = f"/v1/files/{file['id']}"
    assert (await service.post(f"{path}/request-decision")).status_code == 200
    # Meeting could not place the request (kept there, unplaced): the clerk asks again.
    again = await service.post(f"{path}/request-decision")
    assert again.status_code == 200, again.text
    assert again.json()["state"] == "awaiting_decision"
    first, second = await service.events(DecisionNeeded.TYPE)
    assert first.id != second.id  # a new event: meeting's inbox would skip the same one
    assert second.data_as(DecisionNeeded).external_identifier == file["reference"]

    assert await service.deliver(inbound(decided(file["reference"]), SAMBREVILLE, "i")) == (
        "handled"
    )
    problem(await service.post(f"{path}/request-decision"), 409, "file-state-forbids")


@pytest.mark.parametrize("outcome", ["failed", "dead"])
async def test_an_opinion_request_never_delivered_is_not_deemed_favourable(
    service: UrbanService, outcome: str
) -> None:
    file, opinion_id = await opinion_asked(service, due_on=commune_today())
    path = f"/v1/files/{file['id']}"
    [request] = await service.events(OpinionRequested.TYPE)
    refused = receipt(request, outcome, reason="no such body at the opinions platform")
    assert await service.deliver(refused) == "handled"
    past_due = commune_today() - timedelta(days=1)
    while opinion_last_day(past_due) >= commune_today():
        past_due -= timedelta(days=1)
    async with service.app.state.sessions() as session, session.begin():
        (await session.get_one(Opinion, opinion_id)).due_on = past_due

    shown = (await service.get(path)).json()
    assert [o["delivery"] for o in shown["opinions"]] == [outcome]
    assert [d["name"] for d in shown["deadlines"] if d["name"].startswith("opinion:")] == []
    body = problem(
        await service.post(f"{path}/request-decision"), 409, "opinion-request-not-delivered"
    )
    assert body["undelivered"] == ["SRI"] and "SRI" in body["detail"]
    assert (await service.get(path)).json()["opinions"][0]["verdict"] is None

    # The clerk asks the body again; its answer makes the file ready, the failed one aside.
    due_on = (commune_today() + timedelta(days=30)).isoformat()
    again = await service.post(
        f"{path}/opinions", {"body": "SRI", "subject": "Avis", "due_on": due_on}
    )
    assert again.status_code == 201, again.text
    assert again.json()["delivery"] == "pending"
    problem(await service.post(f"{path}/request-decision"), 409, "opinions-pending")
    [_, second] = await service.events(OpinionRequested.TYPE)
    assert await service.deliver(receipt(second)) == "handled"
    assert await service.deliver(receipt(second, outcome)) == "handled"  # late: ignored
    answered = answer(file, again.json()["id"], "SRI", "favourable", "Favorable.")
    assert await service.deliver(answered) == "handled"
    ready = (await service.get(path)).json()
    assert ready["state"] == "awaiting_decision"
    assert [(o["verdict"], o["delivery"]) for o in ready["opinions"]] == [
        (None, outcome),
        ("favourable", "delivered"),
    ]


async def test_an_opinion_due_on_a_closed_day_is_not_deemed_favourable_before_its_last_day(
    service: UrbanService, monkeypatch: pytest.MonkeyPatch
) -> None:
    due_on = commune_today() + timedelta(days=1)
    while is_working_day(due_on):
        due_on += timedelta(days=1)
    last = opinion_last_day(due_on)
    assert last > due_on
    file, _ = await opinion_asked(service, due_on=due_on)
    path = f"/v1/files/{file['id']}"

    def on(day: date) -> None:
        moment = datetime.combine(day, time(12), tzinfo=UTC)
        monkeypatch.setattr(urban_api, "utcnow", lambda: moment)

    on(last)  # the body still has this whole day
    problem(await service.post(f"{path}/request-decision"), 409, "opinions-pending")
    shown = (await service.get(path)).json()
    assert {d["name"]: d["due_on"] for d in shown["deadlines"]}["opinion:SRI"] == last.isoformat()
    on(last + timedelta(days=1))
    asked = await service.post(f"{path}/request-decision")
    assert asked.status_code == 200, asked.text
    assert asked.json()["opinions"][0]["verdict"] == "deemed_favourable"


async def test_a_final_response_notice_refuses_opens_the_notification_for_a_corrected_one(
    service: UrbanService,
) -> None:
    await service.deliver(notification())
    [opened] = await service.events(FileOpened.TYPE)
    file_id, reference = opened.data_as(FileOpened).file_id, opened.data_as(FileOpened).reference
    path = f"/v1/files/{file_id}"
    assert (await service.post(f"{path}/complete")).status_code == 200
    final_body = {"message": "Le collège octroie le permis.", "state": "FINAL"}
    # Undecided, a file has no FINAL response to send.
    problem(await service.post(f"{path}/notice-responses", final_body), 409, "file-state-forbids")
    assert (await service.post(f"{path}/request-decision")).status_code == 200
    assert await service.deliver(inbound(decided(reference), SAMBREVILLE, "item")) == "handled"
    [_, final] = await service.events(NoticeResponseRequested.TYPE)

    refused = receipt(final, "failed", reason="NOTICe: 400 message too long")
    assert await service.deliver(refused) == "handled"

    file = (await service.get(path)).json()
    assert (file["state"], file["notice_state"], file["notified_on"]) == (
        "granted",
        "partial_sent",
        None,
    )
    assert [(r["state"], r["delivery"]) for r in file["notice_responses"]] == [
        ("PARTIAL", "pending"),
        ("FINAL", "failed"),
    ]
    resent = await service.post(f"{path}/notice-responses", final_body)
    assert resent.status_code == 200, resent.text
    assert resent.json()["notice_state"] == "closed"
    [_, _, corrected] = await service.events(NoticeResponseRequested.TYPE)
    data = corrected.data_as(NoticeResponseRequested)
    assert (data.state, data.message, data.decision, data.decision_number) == (
        "FINAL",
        final_body["message"],
        "granted",
        "COL/2026/0042",
    )
    # The first FINAL's last receipt, late, does not open what the corrected one answers.
    assert await service.deliver(receipt(final, "dead")) == "handled"
    assert (await service.get(path)).json()["notice_state"] == "closed"
    assert await service.deliver(receipt(corrected)) == "handled"
    file = (await service.get(path)).json()
    assert file["notified_on"] is not None and file["next_deadline"] is None


async def test_a_refused_final_response_brought_through_by_a_replay_closes_the_notification(
    service: UrbanService,
) -> None:
    await service.deliver(notification())
    [opened] = await service.events(FileOpened.TYPE)
    file_id, reference = opened.data_as(FileOpened).file_id, opened.data_as(FileOpened).reference
    path = f"/v1/files/{file_id}"
    assert (await service.post(f"{path}/complete")).status_code == 200
    assert (await service.post(f"{path}/request-decision")).status_code == 200
    assert await service.deliver(inbound(decided(reference), SAMBREVILLE, "item")) == "handled"
    [_, final] = await service.events(NoticeResponseRequested.TYPE)
    assert await service.deliver(receipt(final, "dead")) == "handled"
    assert (await service.get(path)).json()["notice_state"] == "partial_sent"
    # An operator replays it in the gateway, and it goes through this time.
    assert await service.deliver(receipt(final)) == "handled"
    file = (await service.get(path)).json()
    assert (file["notice_state"], file["notified_on"] is not None) == ("closed", True)
    again = {"message": "Encore.", "state": "FINAL"}
    problem(
        await service.post(f"{path}/notice-responses", again), 409, "notice-notification-closed"
    )


async def test_a_database_made_before_opinion_receipts_gets_their_columns(
    database: tuple[str, str | None],
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    added = {"request_event_id", "delivery"}
    try:
        await create_table_without(engine, schema, Opinion, added)
        assert await migrate(engine, "urban", MIGRATIONS[:10], schema=schema) == 10
        assert await migrate(engine, "urban", MIGRATIONS, schema=schema) == len(MIGRATIONS)
        assert added <= await columns_of(engine, Opinion.__tablename__)
    finally:
        await engine.dispose()
