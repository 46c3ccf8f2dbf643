"""Inforius and Stésud: the connectors against the real sandbox (HTTP on 127.0.0.1, the drop
directory it watches), and approved invoices booked through a running gateway whose receipts
carry the booking references (real broker, SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.envelope import CloudEvent, to_record
from contracts.events.gateway import DeliveryReceipt
from gateway.connectors.base import ConnectorContext, Delivery
from gateway.connectors.inforius import InforiusConnector
from gateway.connectors.inforius import create_connector as create_inforius
from gateway.connectors.stesud import StesudConnector, file_name
from gateway.connectors.stesud import create_connector as create_stesud
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from kernel.kafka import make_producer
from kernel.settings import HubSettings
from sandbox.app import build_app
from sandbox.recorder import Recorder
from tests.support.gateway_hub import GatewayHub, events_on, eventually
from tests.support.invoices import UNKNOWN_SUPPLIER_VAT, approved_invoice
from tests.support.servers import serving

pytestmark = pytest.mark.integration

KEY = "e1:approved-invoice-accounting"


@pytest.fixture
async def sandbox(corpus: Path, hub_settings: HubSettings) -> AsyncIterator[str]:
    async with serving(build_app(hub_settings, Recorder())) as url:
        yield url


async def received(http: httpx.AsyncClient, sandbox: str, service: str) -> list[dict[str, Any]]:
    answer = await http.get(f"{sandbox}/_sandbox/received", params={"service": service})
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def delivery(event: CloudEvent, key: str = KEY) -> Delivery:
    return Delivery(key, event.tenant, "approved-invoice-accounting", event, 1)


# -- through the gateway ----------------------------------------------------------------------


async def test_inforius_and_stesud_book_approved_invoices_and_receipts_carry_the_reference(
    running_gateway: GatewayHub, http: httpx.AsyncClient, kafka_bootstrap: str
) -> None:
    tenants = {running_gateway.inforius_tenant, running_gateway.stesud_tenant}
    producer = make_producer(kafka_bootstrap, client_id="test-factures")
    await producer.start()
    try:
        for tenant in sorted(tenants):
            record = to_record(approved_invoice(tenant=tenant, invoice_id=f"inv-{tenant}"))
            await producer.send_and_wait(
                record.topic, value=record.value, key=record.key, headers=record.headers
            )
    finally:
        await producer.stop()

    receipts = await events_on(
        kafka_bootstrap, "gateway.receipts", lambda e: e.tenant in tenants, at_least=2, timeout=60
    )

    by_tenant = {e.tenant: (e.subject, e.data_as(DeliveryReceipt)) for e in receipts}
    assert len(receipts) == 2 and set(by_tenant) == tenants
    booked = {
        "inforius": [
            r["answer"]["bookingReference"]
            for r in await received(http, running_gateway.sandbox, "inforius")
        ],
        "stesud": [
            r["answer"]["booking_reference"]
            for r in await received(http, running_gateway.sandbox, "stesud")
        ],
    }
    for tenant, connector in (
        (running_gateway.inforius_tenant, "inforius"),
        (running_gateway.stesud_tenant, "stesud"),
    ):
        subject, receipt = by_tenant[tenant]
        assert subject == f"inv-{tenant}"
        assert (receipt.outcome, receipt.connector) == ("delivered", connector)
        assert [receipt.external_reference] == booked[connector]
        assert (receipt.external_reference or "").startswith(("INF/", "STS-"))
    assert by_tenant[running_gateway.stesud_tenant][1].attempts >= 2  # written, then acknowledged


# -- Inforius ---------------------------------------------------------------------------------


def inforius_for(
    sandbox: str, http: httpx.AsyncClient, tenant: str = "62063", **overrides: Any
) -> InforiusConnector:
    config = {
        "type": "inforius",
        "base_url": f"{sandbox}/inforius/api/v2",
        "api_key": f"sandbox-inforius-{tenant}",
    } | overrides
    return create_inforius(ConnectorContext(tenant, HubSettings(), http), config)


async def test_inforius_books_once_per_idempotency_key(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    connector = inforius_for(sandbox, http)

    first = await connector.deliver(delivery(approved_invoice()))
    again = await connector.deliver(delivery(approved_invoice()))

    assert again.external_reference == first.external_reference
    [reception] = await received(http, sandbox, "inforius")
    assert reception["arrivals"] == 2
    assert reception["tenant"] == "62063"
    assert reception["summary"]["invoice"] == "F-2026/0042"
    assert reception["summary"]["payable"] == "1210.00"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (
            approved_invoice(vat_id=UNKNOWN_SUPPLIER_VAT),
            f"HTTP 422: Inforius: The supplier with VAT number {UNKNOWN_SUPPLIER_VAT} is not"
            " in the supplier file of administration 62063",
        ),
        (
            # Dots and spaces are read past (the way Belgian letters write it); a slash is not.
            approved_invoice(vat_id="BE 0406/798/006"),
            "supplier.vatNumber: 'BE0406/798/006' does not match",
        ),
        (approved_invoice(ubl_base64="JVBERi0xLjcK"), "the UBL original is not an XML document"),
    ],
)
async def test_inforius_refusals_are_permanent_with_its_explanation(
    sandbox: str, http: httpx.AsyncClient, event: CloudEvent, reason: str
) -> None:
    with pytest.raises(PermanentDeliveryError) as raised:
        await inforius_for(sandbox, http).deliver(delivery(event))

    assert reason in str(raised.value)
    assert await received(http, sandbox, "inforius") == []


async def test_inforius_refuses_a_duplicate_and_another_administration(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    connector = inforius_for(sandbox, http)
    first = await connector.deliver(delivery(approved_invoice()))

    with pytest.raises(PermanentDeliveryError) as duplicate:
        await connector.deliver(delivery(approved_invoice(invoice_id="inv-2"), key="e2:r"))
    assert f"already booked as {first.external_reference}" in str(duplicate.value)

    other = inforius_for(sandbox, http, administration="92137")
    with pytest.raises(PermanentDeliveryError) as wrong:
        await other.deliver(delivery(approved_invoice(), key="e3:r"))
    assert "This key books in administration 62063, not 92137" in str(wrong.value)


async def test_inforius_requests_break_no_contract_and_errors_are_problem_json(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    url = f"{sandbox}/inforius/api/v2/purchase-invoices"
    headers = {"X-API-Key": "sandbox-inforius-62063", "Idempotency-Key": "k"}
    body = inforius_for(sandbox, http).purchase_invoice(approved_invoice().data)  # type: ignore[arg-type]

    bad = await http.post(url, content=json.dumps(body | {"lines": []}), headers=headers)
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    assert (bad.json()["code"], bad.json()["errors"]) == (
        "INVALID_REQUEST",
        ["lines: [] should be non-empty"],
    )
    assert (await http.post(url, json=body, headers={"Idempotency-Key": "k"})).status_code == 401
    no_key = await http.post(url, json=body, headers={"X-API-Key": "sandbox-inforius-62063"})
    assert "Idempotency-Key header is required" in no_key.json()["detail"]


async def test_inforius_faults_and_timeouts_are_retryable(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    faults = f"{sandbox}/_sandbox/faults/inforius"
    await http.put(faults, json={"error_rate": 1.0})
    with pytest.raises(RetryableDeliveryError) as unavailable:
        await inforius_for(sandbox, http).deliver(delivery(approved_invoice()))
    assert "HTTP 503" in str(unavailable.value)

    await http.put(faults, json={"timeout_rate": 1.0, "timeout_seconds": 1.0})
    with pytest.raises(RetryableDeliveryError) as slow:
        await inforius_for(sandbox, http, timeout_seconds=0.2).deliver(delivery(approved_invoice()))
    assert "timed out" in str(slow.value)
    assert await received(http, sandbox, "inforius") == []


# -- Stésud -----------------------------------------------------------------------------------


def stesud_for(
    hub_settings: HubSettings, http: httpx.AsyncClient, tenant: str = "92137"
) -> StesudConnector:
    return create_stesud(ConnectorContext(tenant, hub_settings, http), {"type": "stesud"})


async def deliver_until_answered(connector: StesudConnector, event: CloudEvent) -> str:
    async def attempt() -> str | None:
        try:
            return (await connector.deliver(delivery(event))).external_reference
        except RetryableDeliveryError:
            return None

    reference = await eventually(attempt, timeout=10)
    assert reference is not None, "the sandbox's Stésud never acknowledged the file"
    return reference


async def test_stesud_books_the_file_written_once(
    sandbox: str, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    connector = stesud_for(hub_settings, http)

    reference = await deliver_until_answered(connector, approved_invoice(tenant="92137"))

    assert reference.startswith("STS-92137-")
    [reception] = await received(http, sandbox, "stesud")
    assert (reception["idempotency_key"], reception["arrivals"]) == (file_name(KEY), 1)
    assert reception["answer"] == {"status": "BOOKED", "booking_reference": reference}
    assert [p.name for p in (connector.directory / "done").iterdir()] == [file_name(KEY)]
    assert list((connector.directory / "in").iterdir()) == []
    # Delivered again (a crash before the outcome was recorded): the same reference, no new file.
    assert (
        await connector.deliver(delivery(approved_invoice(tenant="92137")))
    ).external_reference == reference
    assert len(await received(http, sandbox, "stesud")) == 1


async def test_stesud_rejects_an_unknown_supplier_for_good(
    sandbox: str, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    connector = stesud_for(hub_settings, http)
    event = approved_invoice(tenant="92137", vat_id=UNKNOWN_SUPPLIER_VAT)

    async def attempt() -> str | None:
        try:
            await connector.deliver(delivery(event))
        except RetryableDeliveryError:
            return None
        except PermanentDeliveryError as exc:
            return exc.reason
        return "delivered"

    reason = await eventually(attempt, timeout=10)

    assert reason == (
        f"Stésud rejected {file_name(KEY)}: UNKNOWN_SUPPLIER: the supplier with VAT number"
        f" {UNKNOWN_SUPPLIER_VAT} is not in the supplier file of administration 92137"
    )


async def test_stesud_answers_a_file_that_breaks_the_contract(
    sandbox: str, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    directory = hub_settings.var_dir / "stesud" / "92137"
    (directory / "in").mkdir(parents=True)
    (directory / "in" / "bad.xml").write_bytes(b"<PurchaseInvoice/>")

    async def acknowledgement() -> bytes | None:
        path = directory / "out" / "bad.ack.xml"
        return path.read_bytes() if path.exists() else None

    answer = await eventually(acknowledgement, timeout=10)

    assert answer is not None
    assert b'<Reason code="INVALID_FILE">' in answer
    assert b"No matching global declaration available for the validation root" in answer
