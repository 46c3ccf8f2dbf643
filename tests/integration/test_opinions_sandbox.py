"""Opinions end to end: an OpinionRequested event reaches the sandbox's platform through the
opinion_rest connector, and the body's answer comes back as one OpinionReceived."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import httpx
import pytest

from contracts.envelope import new_event
from contracts.events.gateway import DeliveryReceipt
from contracts.events.outside import OpinionReceived
from contracts.events.urban import OpinionRequested
from tests.support.gateway_hub import events_on
from tests.support.urban_gateway import UrbanGateway, publish, urban_gateway

pytestmark = pytest.mark.integration


@pytest.fixture
async def hub(
    tmp_path: Path, kafka_bootstrap: str, database: tuple[str, str | None], corpus: Path
) -> AsyncIterator[UrbanGateway]:
    async with urban_gateway(tmp_path, kafka_bootstrap, database, corpus) as running:
        yield running


async def test_an_opinion_request_comes_back_as_one_opinion_received(
    hub: UrbanGateway, kafka_bootstrap: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        behaviour = {"delay_seconds": 0.5, "verdict": "favourable_with_conditions", "text": "OK si"}
        assert (
            await http.put(f"{hub.sandbox}/_sandbox/opinions/settings", json=behaviour)
        ).is_success
        data = OpinionRequested(
            file_id="F-9",
            opinion_id=f"OP-{hub.tenant}",
            body="SRI",
            subject="Avis sur la sécurité incendie",
            due_on=date(2026, 5, 1),
            reference="PU/2026/0012",
        )
        await publish(
            kafka_bootstrap,
            new_event(data, tenant=hub.tenant, subject="F-9", source="urn:test:urban"),
        )

        [opinion] = await events_on(
            kafka_bootstrap,
            "gateway.inbound",
            lambda e: e.tenant == hub.tenant and e.type == OpinionReceived.TYPE,
            at_least=1,
            settle_seconds=1.5,
        )
        [receipt] = await events_on(
            kafka_bootstrap, "gateway.receipts", lambda e: e.tenant == hub.tenant, at_least=1
        )
        cases = (await http.get(f"{hub.sandbox}/_sandbox/opinions")).json()["items"]

    received = opinion.data_as(OpinionReceived)
    assert (received.opinion_id, received.file_id, received.body) == (
        f"OP-{hub.tenant}",
        "F-9",
        "SRI",
    )
    assert (received.verdict, received.text) == ("favourable_with_conditions", "OK si")
    assert opinion.subject == "F-9"
    assert receipt.data_as(DeliveryReceipt).outcome == "delivered"
    [case] = [c for c in cases if c["account"] == hub.tenant]
    assert (case["arrivals"], case["acknowledged"]) == (1, True)
