"""A decision is notified to the party it concerns: meeting → courrier → (gateway) → meeting.

Each test serves a meeting app and a courrier app, each with its own
database, outbox relay and consumer on the session's broker (fresh consumer
groups that start at the topics' ends: tests/support/groups.py); the test
plays the gateway by publishing its receipts. The tenant is a random code
that only these apps know, so other tests' apps never act on these decisions.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import inspect, select

from contracts.envelope import CloudEvent, from_record, headers_as_text, new_event
from contracts.events.courrier import (
    DocumentReference,
    OutgoingMailFailed,
    OutgoingMailSendRequested,
    OutgoingMailSent,
)
from contracts.events.meeting import ItemDecided
from kernel.consumer import InboxEntry
from kernel.database import create_engine
from kernel.migrations import migrate
from kernel.settings import HubSettings
from services.courrier.domain import check_letter
from services.courrier.tables import MIGRATIONS, Mail
from tests.integration import test_courrier_api, test_meeting_api
from tests.integration.test_courrier_api import Courrier
from tests.integration.test_courrier_events import (
    eventually,
    publish,
    receipt_for,
    records_with_key,
)
from tests.integration.test_meeting_api import NISS, TENANT_FILE, WS4PM_PASSWORD, MeetingService
from tests.support.groups import group_at_end
from tests.support.hub_processes import drop_schemas
from tests.support.migrations import columns_of, create_table_without
from tests.unit.test_decision_letters import pdf_text

pytestmark = pytest.mark.integration


@dataclass
class Hub:
    tenant: str
    meeting: MeetingService
    courrier: Courrier


@pytest.fixture
async def meeting_database(
    database: tuple[str, str | None], tmp_path: Path
) -> AsyncIterator[tuple[str, str | None]]:
    """A second fresh database beside ``database``: meeting and courrier never share one."""
    url, schema = database
    if schema is None:
        yield f"sqlite+aiosqlite:///{tmp_path / 'meeting.db'}", None
        return
    yield url, schema + "_meeting"
    await drop_schemas(url, [schema + "_meeting"])


@pytest.fixture
async def hub(
    hub_settings: HubSettings,
    tmp_path: Path,
    database: tuple[str, str | None],
    meeting_database: tuple[str, str | None],
    kafka_bootstrap: str,
) -> AsyncIterator[Hub]:
    tenant = str(random.randrange(20000, 50000))
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    (tenants / f"{tenant}.yaml").write_text(
        TENANT_FILE.format(code=tenant, name=f"Commune de Test {tenant}", password=WS4PM_PASSWORD),
        "utf-8",
    )
    settings = hub_settings.model_copy(update={"tenants_dir": tenants})
    options: dict[str, Any] = {"background": True, "kafka_bootstrap_servers": kafka_bootstrap}
    async with (
        test_courrier_api.running(
            settings,
            database,
            group_id=await group_at_end(kafka_bootstrap, "courrier-test"),
            **options,
        ) as courrier,
        test_meeting_api.running(
            settings,
            meeting_database,
            group_id=await group_at_end(kafka_bootstrap, "meeting-test"),
            **options,
        ) as meeting,
    ):
        # Both consumers are up once each handled a first event (see test_courrier_events).
        courrier_probe = receipt_for(str(uuid.uuid4()), "probe", "delivered", tenant=tenant)
        meeting_probe = courrier_event(
            OutgoingMailSent(
                mail_id="probe",
                registration_number="S2026/999999",
                ebox_message_id="probe",
                about=DocumentReference(service="meeting", document_id=str(uuid.uuid4())),
            ),
            tenant,
        )
        await publish(kafka_bootstrap, courrier_probe)
        await publish(kafka_bootstrap, meeting_probe)
        await eventually(lambda: handled(courrier.app, courrier_probe), "courrier's consumer is up")
        await eventually(lambda: handled(meeting.app, meeting_probe), "meeting's consumer is up")
        yield Hub(tenant, meeting, courrier)


def courrier_event(data: Any, tenant: str) -> CloudEvent:
    return new_event(data, tenant=tenant, subject=data.mail_id, source="urn:hub:courrier")


async def handled(app: Any, *events: CloudEvent) -> bool:
    async with app.state.sessions() as session:
        ids = set((await session.scalars(select(InboxEntry.event_id))).all())
    return {event.id for event in events} <= ids


async def decided_item(hub: Hub, **changes: Any) -> str:
    meeting_id = await hub.meeting.meeting(tenant=hub.tenant)
    item_id = await hub.meeting.presented_item(meeting_id, tenant=hub.tenant, **changes)
    response = await hub.meeting.decide(item_id, tenant=hub.tenant)
    assert response.status_code == 200, response.text
    return item_id


async def mails_about(hub: Hub, item_id: str) -> list[dict[str, Any]]:
    response = await hub.courrier.http.get(
        "/v1/outgoing-mails", headers=hub.courrier.auth(hub.tenant)
    )
    assert response.status_code == 200, response.text
    return [
        mail
        for mail in response.json()["items"]
        if mail["about"] == {"service": "meeting", "document_id": item_id}
    ]


async def notification(hub: Hub, item_id: str) -> dict[str, Any]:
    response = await hub.meeting.http.get(
        f"/v1/items/{item_id}", headers=hub.meeting.auth(hub.tenant)
    )
    assert response.status_code == 200, response.text
    [delivery] = [d for d in response.json()["deliveries"] if d["kind"] == "notification"]
    return dict(delivery)


async def send_request_of(hub: Hub, mail_id: str) -> str:
    [row] = [
        row
        for row in await hub.courrier.outbox()
        if row.event_type == OutgoingMailSendRequested.TYPE and row.key.endswith(mail_id.encode())
    ]
    return row.event_id


async def events_with_key(
    bootstrap: str, topic: str, tenant: str, document_id: str
) -> list[CloudEvent]:
    records = await records_with_key(bootstrap, topic, f"{tenant}:{document_id}".encode())
    return [from_record(headers_as_text(r.headers), r.value) for r in records]


def duplicates_seen() -> float:
    labels = {"component": "courrier", "topic": "meeting.events", "outcome": "duplicate"}
    return REGISTRY.get_sample_value("hub_events_consumed_total", labels) or 0.0


async def test_a_decision_is_notified_once_and_its_delivery_ends_done(
    hub: Hub, kafka_bootstrap: str
) -> None:
    item_id = await decided_item(hub)

    async def one_mail() -> bool:
        return len(await mails_about(hub, item_id)) == 1

    await eventually(one_mail, "courrier created the decision's mail")
    [mail] = await mails_about(hub, item_id)
    assert mail["state"] == "sending"
    assert mail["recipient"] == {"kind": "person", "identifier": NISS, "name": "J. Dupont"}
    number = mail["subject"].rsplit(" ", 1)[1]
    assert mail["subject"].startswith("Décision du Collège communal du ")
    assert number.startswith("COL/")
    download = await hub.courrier.http.get(
        f"/v1/mails/{mail['id']}/files/{mail['letter']['file_id']}",
        headers=hub.courrier.auth(hub.tenant),
    )
    check_letter(download.content)
    assert f"Notre référence : {number}" in pdf_text(download.content)

    # The decision delivered again (same event), and published again under a new id.
    [decision] = [
        event
        for event in await events_with_key(kafka_bootstrap, "meeting.events", hub.tenant, item_id)
        if event.type == ItemDecided.TYPE
    ]
    before = duplicates_seen()
    again = new_event(decision.data, tenant=hub.tenant, subject=item_id, source=decision.source)
    await publish(kafka_bootstrap, decision)
    await publish(kafka_bootstrap, again)
    await eventually(lambda: handled(hub.courrier.app, again), "the re-published decision")

    async def redelivery_skipped() -> bool:
        return duplicates_seen() > before

    await eventually(redelivery_skipped, "the redelivered decision is recognised")
    assert len(await mails_about(hub, item_id)) == 1

    # courrier asked the gateway to send it: meeting sees the notification under way.
    async def in_progress() -> bool:
        return (await notification(hub, item_id))["status"] == "in_progress"

    await eventually(in_progress, "the send request moves the notification on")
    send_event_id = await send_request_of(hub, mail["id"])
    [sent_request, *_] = await events_with_key(
        kafka_bootstrap, "courrier.events", hub.tenant, mail["id"]
    )
    assert sent_request.data_as(OutgoingMailSendRequested).about == DocumentReference(
        service="meeting", document_id=item_id
    )

    # The gateway's receipt: delivered to the e-Box.
    await publish(
        kafka_bootstrap,
        receipt_for(
            mail["id"], send_event_id, "delivered", tenant=hub.tenant, external_reference="EB-77"
        ),
    )

    async def done() -> bool:
        return (await notification(hub, item_id))["status"] == "done"

    await eventually(done, "the mail's delivery marks the notification done")
    delivery = await notification(hub, item_id)
    assert delivery["reference"] == "EB-77"
    view = await hub.courrier.http.get(
        f"/v1/outgoing-mails/{mail['id']}", headers=hub.courrier.auth(hub.tenant)
    )
    assert view.json()["state"] == "sent"
    assert view.json()["about"] == {"service": "meeting", "document_id": item_id}


async def test_an_undeliverable_notification_is_failed_with_the_paper_route(
    hub: Hub, kafka_bootstrap: str
) -> None:
    party = {"kind": "enterprise", "identifier": "0403170701", "name": "Dupont SA"}
    item_id = await decided_item(hub, concerned_party=party, external_identifier="URB/2026/77")
    no_party = await decided_item(hub, concerned_party=None, external_identifier="URB/2026/78")

    async def one_mail() -> bool:
        return len(await mails_about(hub, item_id)) == 1

    await eventually(one_mail, "courrier created the decision's mail")
    [mail] = await mails_about(hub, item_id)
    assert mail["recipient"]["kind"] == "enterprise"
    send_event_id = await send_request_of(hub, mail["id"])
    await publish(
        kafka_bootstrap,
        receipt_for(
            mail["id"],
            send_event_id,
            "failed",
            tenant=hub.tenant,
            reason="the recipient has no digital e-Box",
        ),
    )

    async def failed() -> bool:
        return (await notification(hub, item_id))["status"] == "failed"

    await eventually(failed, "the failed delivery marks the notification failed")
    detail = (await notification(hub, item_id))["detail"]
    assert "the recipient has no digital e-Box" in detail and "on paper" in detail
    events = await events_with_key(kafka_bootstrap, "courrier.events", hub.tenant, mail["id"])
    assert [event.type for event in events] == [
        OutgoingMailSendRequested.TYPE,
        OutgoingMailFailed.TYPE,
    ]
    assert events[1].data_as(OutgoingMailFailed).about == DocumentReference(
        service="meeting", document_id=item_id
    )
    # A decision that names nobody owes no notification and makes no mail.
    response = await hub.meeting.http.get(
        f"/v1/items/{no_party}", headers=hub.meeting.auth(hub.tenant)
    )
    assert "notification" not in [d["kind"] for d in response.json()["deliveries"]]
    assert await mails_about(hub, no_party) == []


async def test_a_registry_at_version_1_gets_the_new_columns(
    database: tuple[str, str | None],
) -> None:
    """A registry created before notifications (migration 1's table) is brought up to date."""
    url, schema = database
    engine = create_engine(url, schema=schema)
    try:
        added = {"about_service", "about_document_id", "requested_by_event_id"}
        await create_table_without(engine, schema, Mail, added)
        assert await migrate(engine, "courrier", MIGRATIONS[:1], schema=schema) == 1
        assert await migrate(engine, "courrier", MIGRATIONS, schema=schema) == len(MIGRATIONS)
        assert added <= await columns_of(engine, Mail.__tablename__)
        async with engine.connect() as connection:
            indexes = await connection.run_sync(
                lambda sync: {i["name"] for i in inspect(sync).get_indexes(Mail.__tablename__)}
            )
        assert "uq_courrier_mails_requested_by" in indexes
    finally:
        await engine.dispose()
