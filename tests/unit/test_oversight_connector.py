"""The oversight_soap connector against a fake oversight service (httpx.MockTransport).

The fake checks what the real one would: the WS-Security signature with the
tenant's certificate, and the Body against the modelled XSD.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from fastapi import Response
from lxml import etree

from contracts.envelope import CloudEvent, new_event
from contracts.events.meeting import AnnexReference, DecisionTransmissionRequested, ItemCreated
from gateway.connectors.base import ConnectorContext, Delivery, connector_types
from gateway.connectors.oversight_soap import OversightSoapConnector
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.wssecurity import verify_signed_envelope
from kernel.pki import ensure_tenant_signing_identity
from kernel.settings import HubSettings
from sandbox.ebox_soap import soap_fault
from sandbox.oversight import (
    CONTRACT_DIR,
    NS,
    SCHEMA,
    DecidedOutcome,
    outcomes_response,
    transmit_response,
)

TENANT = "92137"
ENDPOINT = "http://tutelle.test/oversight/soap/Tutelle"
ROUTE = "decision-oversight"

Handler = Callable[[httpx.Request], httpx.Response]


class FakeOversight:
    """Verifies and records each request; ``answer`` answers (an acknowledgement by default)."""

    def __init__(self, certificate: x509.Certificate) -> None:
        self.certificate = certificate
        self.schema = etree.XMLSchema(etree.parse(str(CONTRACT_DIR / SCHEMA)))
        self.requests: list[httpx.Request] = []
        self.bodies: list[etree._Element] = []
        self.answer: Callable[[etree._Element], httpx.Response] = self.acknowledge

    def acknowledge(self, body: etree._Element) -> httpx.Response:
        return _httpx(transmit_response("TUT-2026-000042", datetime(2026, 3, 2, tzinfo=UTC)))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        verified = verify_signed_envelope(request.content, [self.certificate])
        [operation] = [child for child in verified.body if isinstance(child.tag, str)]
        assert self.schema.validate(etree.ElementTree(operation)), self.schema.error_log
        self.requests.append(request)
        self.bodies.append(operation)
        return self.answer(operation)


def _httpx(response: Response) -> httpx.Response:
    return httpx.Response(
        response.status_code, content=bytes(response.body), headers={"Content-Type": "text/xml"}
    )


@pytest.fixture
def settings(tmp_path: Path) -> HubSettings:
    return HubSettings(var_dir=tmp_path / "var")


@pytest.fixture
def oversight(settings: HubSettings) -> FakeOversight:
    _, cert_file = ensure_tenant_signing_identity(settings.keys_dir, TENANT)
    return FakeOversight(x509.load_pem_x509_certificate(cert_file.read_bytes()))


@pytest.fixture
async def connector(
    settings: HubSettings, oversight: FakeOversight
) -> AsyncIterator[OversightSoapConnector]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(oversight)) as http:
        built = connector_types()["oversight_soap"](
            ConnectorContext(TENANT, settings, http),
            {"type": "oversight_soap", "endpoint": ENDPOINT},
        )
        assert isinstance(built, OversightSoapConnector)
        yield built
        await built.aclose()


def transmission(**changes: object) -> CloudEvent:
    data = DecisionTransmissionRequested.model_validate(
        {
            "item_id": "0b6f9a52-7d1e-4c4e-9a53-7f1c2d3e4f50",
            "meeting_id": "m-1",
            "meeting_config": "council",
            "meeting_kind": "council",
            "meeting_date": datetime(2026, 3, 2, 19, tzinfo=UTC),
            "decision": "accepted",
            "decision_number": "CC/2026/0007",
            "category": "finances",
            "title": "Budget communal 2026",
            "decision_text": "Le conseil approuve le budget.",
            "annexes": [
                AnnexReference(
                    annex_id="a-1",
                    title="Tableau",
                    filename="budget.pdf",
                    media_type="application/pdf",
                    md5="0" * 32,
                )
            ],
        }
        | changes
    )
    return new_event(data, tenant=TENANT, subject=data.item_id, source="urn:hub:meeting")


def delivery(event: CloudEvent) -> Delivery:
    return Delivery(
        idempotency_key=f"{event.id}:{ROUTE}",
        tenant=TENANT,
        route=ROUTE,
        event=event,
        attempt=1,
        trace_headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )


def text(element: etree._Element, path: str) -> str | None:
    return element.findtext("/".join(f"{{{NS}}}{part}" for part in path.split("/")))


async def test_a_decision_is_transmitted_signed_and_its_acknowledgement_returned(
    connector: OversightSoapConnector, oversight: FakeOversight
) -> None:
    work = delivery(transmission())

    result = await connector.deliver(work)

    assert result.external_reference == "TUT-2026-000042"
    [request], [body] = oversight.requests, oversight.bodies
    assert request.headers["Idempotency-Key"] == work.idempotency_key
    assert request.headers["traceparent"].startswith("00-4bf92f")
    assert body.tag == f"{{{NS}}}TransmitDecisionRequest"
    assert text(body, "CommuneNis") == TENANT
    assert text(body, "ItemId") == "0b6f9a52-7d1e-4c4e-9a53-7f1c2d3e4f50"
    assert text(body, "DecisionNumber") == "CC/2026/0007"
    assert text(body, "Meeting/Kind") == "council"
    assert text(body, "Category") == "finances"
    assert text(body, "Annex/FileName") == "budget.pdf"


async def test_a_client_fault_is_permanent_and_a_server_fault_retryable(
    connector: OversightSoapConnector, oversight: FakeOversight
) -> None:
    oversight.answer = lambda body: _httpx(soap_fault("Client", "the request is not valid"))
    with pytest.raises(PermanentDeliveryError, match="not valid"):
        await connector.deliver(delivery(transmission()))

    # A refused signing certificate is retried: the tenant's certificate is at fault, not
    # the decision, and an operator renews or registers it meanwhile (as a REST 401).
    refused = "WS-Security: the signing certificate (CN=x) is not trusted"
    oversight.answer = lambda body: _httpx(soap_fault("Client", refused))
    with pytest.raises(RetryableDeliveryError, match="not trusted"):
        await connector.deliver(delivery(transmission()))

    oversight.answer = lambda body: _httpx(soap_fault("Server", "down", status=503))
    with pytest.raises(RetryableDeliveryError):
        await connector.deliver(delivery(transmission()))


async def test_another_event_type_is_refused_for_good(connector: OversightSoapConnector) -> None:
    data = ItemCreated(
        item_id="i-1",
        meeting_config="council",
        title="t",
        proposing_service="finances",
        origin="rest",
    )
    event = new_event(data, tenant=TENANT, subject="i-1", source="urn:hub:meeting")
    with pytest.raises(PermanentDeliveryError, match="transmission_requested"):
        await connector.deliver(delivery(event))


async def test_outcomes_are_read_signed_after_the_cursor(
    connector: OversightSoapConnector, oversight: FakeOversight
) -> None:
    decided = DecidedOutcome(
        cursor=8,
        tenant=TENANT,
        acknowledgement_number="TUT-2026-000042",
        item_id="0b6f9a52-7d1e-4c4e-9a53-7f1c2d3e4f50",
        decision_number="CC/2026/0007",
        outcome="annulled",
        decided_on=date(2026, 4, 1),
        reason="Excès de pouvoir",
    )
    oversight.answer = lambda body: _httpx(outcomes_response([decided], 7))

    outcomes, next_cursor = await connector.list_outcomes(7)

    [body] = oversight.bodies
    assert (text(body, "CommuneNis"), text(body, "Since")) == (TENANT, "7")
    assert next_cursor == 8
    [outcome] = outcomes
    assert (outcome.cursor, outcome.outcome, outcome.reason) == (8, "annulled", "Excès de pouvoir")
    assert outcome.decided_on == date(2026, 4, 1)
    assert outcome.item_id == decided.item_id
