"""A record of a routed type whose envelope is broken, kept by a running gateway and shown to
its tenant's operators (real broker, SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from contracts.envelope import to_record
from kernel.kafka import make_producer
from tests.support.gateway_hub import GatewayHub, eventually
from tests.support.invoices import approved_invoice

pytestmark = pytest.mark.integration


async def test_a_routed_record_with_a_broken_envelope_is_listed_to_its_tenants_operators(
    running_gateway: GatewayHub, http: httpx.AsyncClient, kafka_bootstrap: str
) -> None:
    tenant = running_gateway.inforius_tenant
    event = approved_invoice(tenant=tenant, invoice_id=f"inv-{tenant}")
    record = to_record(event)
    # Without its UTC offset: the gateway cannot record it, and skipped it unseen.
    headers = [
        (name, b"2026-03-02T10:00:00" if name == "ce_time" else value)
        for name, value in record.headers
    ]
    producer = make_producer(kafka_bootstrap, client_id="test-factures")
    await producer.start()
    try:
        await producer.send_and_wait(
            record.topic, value=record.value, key=record.key, headers=headers
        )
    finally:
        await producer.stop()

    async def kept(token_tenant: str) -> list[dict[str, Any]]:
        listed = await http.get(
            f"{running_gateway.gateway}/v1/rejected-events",
            headers=running_gateway.token(token_tenant, "gateway:read"),
        )
        assert listed.status_code == 200, listed.text
        items: list[dict[str, Any]] = listed.json()["items"]
        return items

    [item] = await eventually(lambda: kept(tenant), timeout=30)
    assert (item["event_id"], item["event_type"], item["topic"]) == (
        event.id,
        event.type,
        record.topic,
    )
    assert "ce_time" in item["reason"] and "no UTC offset" in item["reason"]
    assert await kept(running_gateway.stesud_tenant) == []

    replay = f"{running_gateway.gateway}/v1/rejected-events/{item['id']}/replay"
    read_only = await http.post(replay, headers=running_gateway.token(tenant, "gateway:read"))
    assert read_only.status_code == 403
    # Replayed through the deliveries, it breaks its contract still: it stays kept.
    refused = await http.post(replay, headers=running_gateway.token(tenant, "gateway:operate"))
    assert refused.status_code == 422, refused.text
    assert "ce_time" in refused.json()["detail"]
    assert [kept_item["id"] for kept_item in await kept(tenant)] == [item["id"]]
