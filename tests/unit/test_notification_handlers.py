"""The handlers of a decision's notification, with their storage replaced by fakes.

courrier: a numbered decision naming a party becomes one mail, sent, about the
item; meeting: courrier's events about the item move its notification on.
The integration test (test_decision_notification) runs both on the real broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from contracts.envelope import CloudEvent, new_event
from contracts.events.courrier import (
    DocumentReference,
    OutgoingMailFailed,
    OutgoingMailSendRequested,
    OutgoingMailSent,
    Recipient,
)
from contracts.events.meeting import ItemDecided
from kernel.consumer import KeptUntilFixed
from kernel.tenants import Tenant
from services.courrier import decisions
from services.meeting import notifications
from tests.unit.test_decision_letters import decided

SAMBREVILLE = "92137"
ITEM = "0b6d1c1e-3f7a-4d59-9d0e-6c3b2a1f0e99"
TENANTS = {
    SAMBREVILLE: Tenant(SAMBREVILLE, "Ville de Sambreville", Path(f"{SAMBREVILLE}.yaml"), raw={})
}


@dataclass
class FakeRegistry:
    """What the courrier handler asks of ``services.courrier.registry``."""

    existing: object | None = None
    created: list[dict[str, Any]] = field(default_factory=list)
    sent: list[object] = field(default_factory=list)

    async def find_requested_mail(
        self, session: object, tenant: str, about: DocumentReference, event_id: str
    ) -> object | None:
        return self.existing

    async def create_outgoing(self, session: object, **fields: Any) -> dict[str, Any]:
        self.created.append(fields)
        if fields.get("send"):
            self.sent.append(fields)
        return fields


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    fake = FakeRegistry()
    for name in ("find_requested_mail", "create_outgoing"):
        monkeypatch.setattr(f"services.courrier.registry.{name}", getattr(fake, name))
    return fake


def decision_event(tenant: str = SAMBREVILLE, **changes: Any) -> CloudEvent:
    return new_event(decided(**changes), tenant=tenant, subject=ITEM, source="urn:hub:meeting")


async def handle_decision(event: CloudEvent) -> None:
    await decisions.decision_handlers(TENANTS)[ItemDecided.TYPE](None, event)  # type: ignore[arg-type]


async def test_a_decision_naming_a_party_becomes_one_mail_sent_about_the_item(
    fake_registry: FakeRegistry,
) -> None:
    event = decision_event()
    await handle_decision(event)
    [mail] = fake_registry.created
    assert fake_registry.sent == [mail]
    assert (mail["tenant"], mail["recipient_kind"], mail["recipient_identifier"]) == (
        SAMBREVILLE,
        "person",
        "85073003328",
    )
    assert mail["recipient_name"] == "Jeanne Dupont"
    assert mail["subject"] == "Décision du Collège communal du 12 mars 2026 — COL/2026/0042"
    assert mail["letter"].startswith(b"%PDF-")
    assert mail["about"] == DocumentReference(service="meeting", document_id=ITEM)
    assert mail["requested_by_event_id"] == event.id


@pytest.mark.parametrize(
    "event",
    [
        decision_event(concerned_party=None),
        decision_event(decision="postponed", decision_number=None),
    ],
    ids=["nobody concerned", "postponed"],
)
async def test_no_mail_without_a_party_or_a_decision(
    fake_registry: FakeRegistry, event: CloudEvent
) -> None:
    await handle_decision(event)
    assert fake_registry.created == fake_registry.sent == []


async def test_a_decision_for_a_tenant_courrier_does_not_serve_is_kept_not_dropped(
    fake_registry: FakeRegistry,
) -> None:
    # Dropped, the party was never notified, even once the tenant was configured.
    with pytest.raises(KeptUntilFixed, match="tenant 57081, not configured in courrier"):
        await handle_decision(decision_event(tenant="57081"))
    assert fake_registry.created == fake_registry.sent == []


async def test_a_decision_already_notified_makes_no_second_mail(
    fake_registry: FakeRegistry,
) -> None:
    fake_registry.existing = SimpleNamespace(registration_number="S2026/000001")
    await handle_decision(decision_event())
    assert fake_registry.created == []


# -- meeting ------------------------------------------------------------------------------


@pytest.fixture
def deliveries(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    recorded: list[dict[str, Any]] = []

    async def record_delivery(
        session: object,
        tenant: str,
        item_id: str,
        kind: str,
        status: str,
        now: datetime,
        *,
        reference: str | None = None,
        detail: str | None = None,
    ) -> bool:
        assert now.tzinfo is UTC
        recorded.append(
            {
                "tenant": tenant,
                "item_id": item_id,
                "kind": kind,
                "status": status,
                "reference": reference,
                "detail": detail,
            }
        )
        return True

    monkeypatch.setattr("services.meeting.agenda.record_delivery", record_delivery)
    return recorded


ABOUT = DocumentReference(service="meeting", document_id=ITEM)
RECIPIENT = Recipient(kind="person", identifier="85073003328")


def courrier_event(data: Any) -> CloudEvent:
    return new_event(data, tenant=SAMBREVILLE, subject="mail-1", source="urn:hub:courrier")


async def handle_courrier(event: CloudEvent) -> None:
    await notifications.HANDLERS[event.type](None, event)  # type: ignore[arg-type]


async def test_courriers_events_about_the_item_move_its_notification_on(
    deliveries: list[dict[str, Any]],
) -> None:
    common: dict[str, Any] = {
        "mail_id": "mail-1",
        "registration_number": "S2026/000045",
        "about": ABOUT,
    }
    for data in (
        OutgoingMailSendRequested(
            **common,
            recipient=RECIPIENT,
            subject="Décision",
            body_pdf_base64="JVBERi0=",
            body_pdf_md5="0" * 32,
        ),
        OutgoingMailSent(**common, ebox_message_id="EBOX-4711"),
        OutgoingMailFailed(**common, reason="the recipient has no digital e-Box."),
    ):
        await handle_courrier(courrier_event(data))
    assert [(d["tenant"], d["item_id"], d["kind"]) for d in deliveries] == [
        (SAMBREVILLE, ITEM, "notification")
    ] * 3
    assert [(d["status"], d["reference"]) for d in deliveries] == [
        ("in_progress", None),
        ("done", "EBOX-4711"),
        ("failed", None),
    ]
    assert "S2026/000045" in (deliveries[0]["detail"] or "")
    failed = deliveries[2]["detail"] or ""
    assert "the recipient has no digital e-Box. Send the decision on paper" in failed


@pytest.mark.parametrize(
    "about", [None, DocumentReference(service="urban", document_id=ITEM)], ids=["none", "urban"]
)
async def test_mail_about_nothing_of_ours_is_ignored(
    deliveries: list[dict[str, Any]], about: DocumentReference | None
) -> None:
    sent = OutgoingMailSent(
        mail_id="mail-1", registration_number="S2026/000045", ebox_message_id="E", about=about
    )
    await handle_courrier(courrier_event(sent))
    assert deliveries == []
