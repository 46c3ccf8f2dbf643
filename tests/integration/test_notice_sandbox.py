"""NOTICe end to end: the sandbox over HTTP, the gateway's inbound adapter polling it and
the notice connector answering through it (real broker, SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.envelope import new_event
from contracts.events.gateway import DeliveryReceipt
from contracts.events.outside import NoticeNotificationReceived
from contracts.events.urban import NoticeResponseRequested
from sandbox.notice import CONTRACT
from sandbox.openapi_contract import OpenApiContract, contract_errors
from tests.support.gateway_hub import events_on, eventually
from tests.support.urban_gateway import UrbanGateway, publish, urban_gateway

pytestmark = pytest.mark.integration

PLAN = b"%PDF-1.7 plan of the house"
FORM = "Formulaire de demande de permis"


@pytest.fixture
async def hub(
    tmp_path: Path, kafka_bootstrap: str, database: tuple[str, str | None], corpus: Path
) -> AsyncIterator[UrbanGateway]:
    async with urban_gateway(tmp_path, kafka_bootstrap, database, corpus) as running:
        yield running


def notification(instance: str, notification_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "id": notification_id,
        "instance_code": instance,
        "file_type": "permis_urbanisme",
        "received_on": "2026-03-02",
        "subject": "Construction d'une maison unifamiliale",
        "applicants": [{"kind": "person", "identifier": "85073003328", "name": "Lambert, Sophie"}],
        "parcels": [{"capakey": "62063A0123/00B000", "address": "Rue des Guillemins 27"}],
        "documents": [
            {
                "filename": "plan.pdf",
                "content_base64": base64.b64encode(PLAN).decode(),
            },
            {"filename": "formulaire.txt", "media_type": "text/plain", "content": FORM},
        ],
    } | changes


async def seed(http: httpx.AsyncClient, sandbox: str, *notifications: dict[str, Any]) -> None:
    answer = await http.post(
        f"{sandbox}/_sandbox/notice/notifications", json={"notifications": list(notifications)}
    )
    assert answer.status_code == 201, answer.text


async def sandbox_state(http: httpx.AsyncClient, sandbox: str, notification_id: str) -> Any:
    items = (await http.get(f"{sandbox}/_sandbox/notice/notifications")).json()["items"]
    [found] = [n for n in items if n["id"] == notification_id]
    return found


def response(hub: UrbanGateway, notification_id: str, state: str, **changes: Any) -> Any:
    fields: dict[str, Any] = {
        "file_id": "F-1",
        "notification_id": notification_id,
        "instance_code": hub.instance,
        "state": state,
        "message": "Dossier complet." if state == "PARTIAL" else "Permis octroyé.",
        "decision": None if state == "PARTIAL" else "granted",
        "decision_number": None if state == "PARTIAL" else "COL/2026/77",
    }
    data = NoticeResponseRequested(**(fields | changes))
    return new_event(data, tenant=hub.tenant, subject="F-1", source="urn:test:urban")


async def test_a_notification_becomes_one_event_and_the_responses_reach_notice_once_each(
    hub: UrbanGateway, http: httpx.AsyncClient, kafka_bootstrap: str
) -> None:
    notification_id = f"NOT-{hub.tenant}-1"
    await seed(http, hub.sandbox, notification(hub.instance, notification_id))

    [event] = await events_on(
        kafka_bootstrap,
        "gateway.inbound",
        lambda e: e.tenant == hub.tenant and e.type == NoticeNotificationReceived.TYPE,
        at_least=1,
        settle_seconds=1.5,  # many polls meanwhile: still one event
    )
    data = event.data_as(NoticeNotificationReceived)
    assert (event.subject, data.notification_id, data.instance_code) == (
        notification_id,
        notification_id,
        hub.instance,
    )
    assert [(d.filename, d.media_type, d.size) for d in data.documents] == [
        ("plan.pdf", "application/pdf", len(PLAN)),
        ("formulaire.txt", "text/plain", len(FORM)),
    ]
    assert base64.b64decode(data.documents[0].content_base64) == PLAN
    assert data.documents[0].sha256 == hashlib.sha256(PLAN).hexdigest()
    assert data.parcels[0].capakey == "62063A0123/00B000"
    state = await sandbox_state(http, hub.sandbox, notification_id)
    assert state["fetches"] == 1 and state["documentFetches"] == {"D1": 1, "D2": 1}
    listed = await http.get(f"{hub.gateway}/v1/inbound", headers=hub.token("gateway:read"))
    [item] = listed.json()["items"]
    assert (item["channel"], item["status"], item["event_id"], item["reason"]) == (
        "notice",
        "published",
        event.id,
        None,
    )

    async def waiting_for(state: str) -> Any:
        listed = await http.get(
            f"{hub.sandbox}/_sandbox/notice/notifications",
            params={"instance_code": hub.instance, "without_response": state, "limit": 0},
        )
        return listed.json()

    assert await waiting_for("PARTIAL") == {"count": 1, "items": []}

    partial, final = (
        response(hub, notification_id, "PARTIAL"),
        response(hub, notification_id, "FINAL"),
    )
    await publish(kafka_bootstrap, partial)
    await publish(kafka_bootstrap, final)
    again = response(hub, notification_id, "FINAL", message="Une seconde décision.")
    await publish(kafka_bootstrap, again)

    receipts = await events_on(
        kafka_bootstrap,
        "gateway.receipts",
        lambda e: e.tenant == hub.tenant and e.type == DeliveryReceipt.TYPE,
        at_least=3,
        timeout=40,
    )
    by_source = {
        r.data_as(DeliveryReceipt).source_event_id: r.data_as(DeliveryReceipt) for r in receipts
    }
    assert by_source[partial.id].outcome == "delivered"
    assert by_source[final.id].outcome == "delivered"
    refused = by_source[again.id]
    assert refused.outcome == "failed"
    assert refused.reason is not None and "already closed by a FINAL response" in refused.reason
    state = await sandbox_state(http, hub.sandbox, notification_id)
    assert state["status"] == "CLOTUREE"
    assert [(r["state"], r.get("decision"), r["arrivals"]) for r in state["responses"]] == [
        ("PARTIAL", None, 1),
        ("FINAL", "GRANTED", 1),
    ]
    assert by_source[final.id].external_reference == state["responses"][1]["responseId"]
    assert await waiting_for("PARTIAL") == {"count": 0, "items": []}


async def test_an_unknown_instance_is_kept_unroutable_and_a_bad_document_is_flagged(
    hub: UrbanGateway, http: httpx.AsyncClient
) -> None:
    stranger = f"NOT-{hub.tenant}-stranger"
    corrupted = notification(hub.instance, f"NOT-{hub.tenant}-corrupted")
    corrupted["documents"][0]["declared_sha256"] = "0" * 64
    await seed(http, hub.sandbox, notification(hub.stranger_instance, stranger), corrupted)
    operator = hub.token("gateway:read", "gateway:unroutable")

    async def both() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = (
            await http.get(f"{hub.gateway}/v1/inbound", headers=operator)
        ).json()["items"]
        return items if len(items) == 2 else None

    items = await eventually(both)
    assert items is not None
    by_id = {item["source_message_id"]: item for item in items}
    assert (by_id[stranger]["status"], by_id[stranger]["tenant"]) == ("unroutable", None)
    assert (
        f"The NOTICe instance {hub.stranger_instance!r} is no tenant's" in by_id[stranger]["reason"]
    )
    flagged = by_id[corrupted["id"]]
    assert flagged["status"] == "published"
    assert "document D1 (plan.pdf): SHA-256" in flagged["reason"]
    # Fetched twice (a broken transfer is tried again), then published as received.
    state = await sandbox_state(http, hub.sandbox, corrupted["id"])
    assert state["documentFetches"] == {"D1": 2, "D2": 1}


async def test_the_sandbox_lists_pages_and_validates_responses_as_its_contract_says(
    hub: UrbanGateway, http: httpx.AsyncClient
) -> None:
    contract = OpenApiContract(CONTRACT)
    instance = f"LIST-{hub.tenant}"
    await seed(
        http, hub.sandbox, *(notification(instance, f"L-{hub.tenant}-{i}") for i in range(5))
    )
    key = {"X-Api-Key": "sandbox-notice-key-hub"}
    api = f"{hub.sandbox}/notice/api/v1"

    seen, after = [], None
    while True:
        params: dict[str, Any] = {"status": "EN_ATTENTE_REPONSE", "limit": 2}
        if after:
            params["after"] = after
        page = (
            await http.get(f"{api}/instances/{instance}/notifications", params=params, headers=key)
        ).json()
        assert contract_errors(contract.validator("NotificationPage"), page) == []
        seen += [item["id"] for item in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [f"L-{hub.tenant}-{i}" for i in range(5)]
    detail = (await http.get(f"{api}/notifications/{seen[0]}", headers=key)).json()
    assert contract_errors(contract.validator("Notification"), detail) == []

    bad = await http.post(
        f"{api}/notifications/{seen[0]}/responses",
        json={"state": "FINAL", "message": "Sans décision"},
        headers=key,
    )
    assert bad.status_code == 422
    assert "'decision' is a required property" in bad.json()["detail"]
    assert contract_errors(contract.validator("Problem"), bad.json()) == []
    unauthorized = await http.get(f"{api}/notifications/{seen[0]}", headers={"X-Api-Key": "x"})
    assert unauthorized.status_code == 401
