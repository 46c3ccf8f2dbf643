"""The regional oversight over real HTTP: the oversight_soap connector (zeep, WS-Security)
against the sandbox, and a gateway that transmits a decision from Kafka and brings the
oversight's outcome back as one event."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from contracts.envelope import CloudEvent, new_event, to_record
from contracts.events.gateway import DeliveryReceipt
from contracts.events.meeting import DecisionTransmissionRequested
from contracts.events.oversight import OversightOutcomeReceived
from gateway.connectors.base import ConnectorContext, Delivery, connector_types
from gateway.connectors.oversight_soap import OversightSoapConnector
from gateway.errors import PermanentDeliveryError
from gateway.http import outbound_transport
from gateway.main import GatewayOptions
from gateway.main import build_app as build_gateway
from kernel.kafka import make_producer
from kernel.settings import HubSettings
from sandbox.app import build_app as build_sandbox
from sandbox.ebox_soap import TrustStore
from sandbox.recorder import Recorder
from tests.support.gateway_hub import events_on
from tests.support.groups import group_at_end
from tests.support.servers import serving

pytestmark = pytest.mark.integration

TENANT = "92137"
PATH = "/oversight/soap/Tutelle"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
TENANT_FILE = """\
tenant: "{code}"
name: Test commune {code}
connectors:
  oversight:
    type: oversight_soap
    endpoint: {sandbox}{path}
    timeout_seconds: 5
routes:
  - name: decision-oversight
    event_type: meeting.decision.transmission_requested.v1
    connector: oversight
retry:
  max_attempts: 5
  base_delay_seconds: 0.1
  max_delay_seconds: 0.5
"""


class Network(httpx.AsyncBaseTransport):
    """Between gateway and oversight: may rewrite requests, keeps the answers."""

    def __init__(self, rewrite: Callable[[bytes], bytes] = lambda body: body) -> None:
        self._network = outbound_transport(max_connections=16)  # the gateway's own
        self._rewrite = rewrite
        self.answers: list[httpx.Response] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = self._rewrite(await request.aread())
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        forwarded = httpx.Request(request.method, request.url, headers=headers, content=body)
        response = await self._network.handle_async_request(forwarded)
        answer = httpx.Response(
            response.status_code, headers=response.headers, content=await response.aread()
        )
        await response.aclose()
        self.answers.append(answer)
        return answer

    async def aclose(self) -> None:
        await self._network.aclose()


def transmission(tenant: str = TENANT, title: str = "Budget communal 2026") -> CloudEvent:
    item_id = str(uuid.uuid4())
    data = DecisionTransmissionRequested(
        item_id=item_id,
        meeting_id="m-1",
        meeting_config="council",
        meeting_kind="council",
        meeting_date=datetime(2026, 3, 2, 19, tzinfo=UTC),
        decision="accepted",
        decision_number=f"CC/2026/{random.randrange(1, 9999):04d}",
        category="finances",
        title=title,
        decision_text="Le conseil approuve le budget.",
    )
    return new_event(data, tenant=tenant, subject=item_id, source="urn:hub:meeting")


def delivery(event: CloudEvent) -> Delivery:
    return Delivery(
        idempotency_key=f"{event.id}:decision-oversight",
        tenant=event.tenant,
        route="decision-oversight",
        event=event,
        attempt=1,
    )


@pytest.fixture
async def sandbox(hub_settings: HubSettings) -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    async with serving(build_sandbox(hub_settings, recorder)) as url:
        yield url, recorder


async def connector_over(
    network: Network, url: str, settings: HubSettings
) -> tuple[httpx.AsyncClient, OversightSoapConnector]:
    http = httpx.AsyncClient(transport=network, timeout=10)
    connector = connector_types()["oversight_soap"](
        ConnectorContext(TENANT, settings, http), {"type": "oversight_soap", "endpoint": url + PATH}
    )
    assert isinstance(connector, OversightSoapConnector)
    return http, connector


async def test_a_signed_transmission_is_verified_and_acknowledged_once(
    sandbox: tuple[str, Recorder], hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifying_threads = []
    verify = TrustStore.verify

    def recorded_verify(store: TrustStore, envelope: bytes) -> Any:
        verifying_threads.append(threading.get_ident())
        return verify(store, envelope)

    monkeypatch.setattr(TrustStore, "verify", recorded_verify)
    url, recorder = sandbox
    http, connector = await connector_over(Network(), url, hub_settings)
    event = transmission()
    try:
        first = await connector.deliver(delivery(event))
        again = await connector.deliver(delivery(event))  # a retry after a lost answer
    finally:
        await connector.aclose()
        await http.aclose()

    assert first.external_reference == again.external_reference
    assert first.external_reference.startswith("TUT-")
    # Verified off the event loop's thread: a large body would hold every request meanwhile.
    assert verifying_threads and threading.get_ident() not in verifying_threads
    [reception] = recorder.receptions("oversight")
    assert reception.arrivals == 2
    assert reception.tenant == TENANT  # from the verified certificate
    assert reception.summary["item_id"] == event.subject
    assert reception.summary["signed_by"] == f"O={TENANT},CN=hub-{TENANT}"


async def test_a_transmission_altered_after_signing_gets_a_soap_fault(
    sandbox: tuple[str, Recorder], hub_settings: HubSettings
) -> None:
    url, recorder = sandbox
    network = Network(lambda body: body.replace(b"Budget communal", b"Budget modifi\xc3\xa9"))
    http, connector = await connector_over(network, url, hub_settings)
    try:
        with pytest.raises(PermanentDeliveryError, match="signature does not match"):
            await connector.deliver(delivery(transmission()))
    finally:
        await connector.aclose()
        await http.aclose()

    [answer] = network.answers
    fault = etree.fromstring(answer.content).find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    assert fault is not None
    assert (answer.status_code, fault.findtext("faultcode")) == (500, "soapenv:Client")
    assert (fault.findtext("faultstring") or "").startswith("WS-Security: the signature")
    assert recorder.receptions("oversight") == []


async def test_the_wsdl_is_served_with_this_endpoint(sandbox: tuple[str, Recorder]) -> None:
    url, _ = sandbox
    async with httpx.AsyncClient() as http:
        wsdl = await http.get(f"{url}{PATH}?wsdl")
        xsd = await http.get(f"{url}{PATH}?xsd=tutelle.xsd")
    assert wsdl.status_code == xsd.status_code == 200
    assert f'location="{url}{PATH}"' in wsdl.text
    assert "MODELLED CONTRACT" in xsd.text


async def test_a_decision_from_kafka_is_transmitted_and_its_outcome_comes_back_once(
    tmp_path: Path,
    kafka_bootstrap: str,
    database: tuple[str, str | None],
) -> None:
    tenant = str(random.randrange(90000, 99999))
    tenants_dir = tmp_path / "tenants"
    tenants_dir.mkdir()
    settings = HubSettings(var_dir=tmp_path / "var", tenants_dir=tenants_dir)
    async with serving(build_sandbox(settings, Recorder())) as sandbox:
        (tenants_dir / f"{tenant}.yaml").write_text(
            TENANT_FILE.format(code=tenant, sandbox=sandbox, path=PATH), encoding="utf-8"
        )
        async with httpx.AsyncClient() as http:
            answer = await http.put(
                f"{sandbox}/_sandbox/oversight/behaviour",
                json={"outcome": "annulled", "reason": "Violation de la loi", "delay_seconds": 0.3},
            )
            assert answer.status_code == 200
        url, schema = database
        options = GatewayOptions(
            database_url=url,
            database_schema=schema,
            kafka_bootstrap_servers=kafka_bootstrap,
            group_id=await group_at_end(kafka_bootstrap, "gateway"),
            oversight_poll_seconds=0.1,
        )
        async with serving(build_gateway(settings, options)):
            event = transmission(tenant)
            producer = make_producer(kafka_bootstrap, client_id="test-meeting")
            await producer.start()
            try:
                record = to_record(event)
                await producer.send_and_wait(
                    record.topic, value=record.value, key=record.key, headers=record.headers
                )
            finally:
                await producer.stop()

            outcomes = await events_on(
                kafka_bootstrap,
                "gateway.inbound",
                lambda e: e.tenant == tenant and e.type == OversightOutcomeReceived.TYPE,
                at_least=1,
                settle_seconds=1.0,
                timeout=60,
            )
            receipts = await events_on(
                kafka_bootstrap,
                "gateway.receipts",
                lambda e: e.tenant == tenant,
                at_least=1,
                settle_seconds=0.2,
                timeout=30,
            )

    [outcome_event] = outcomes
    outcome = outcome_event.data_as(OversightOutcomeReceived)
    [receipt] = [r.data_as(DeliveryReceipt) for r in receipts]
    assert outcome_event.subject == event.subject == outcome.item_id
    assert (outcome.outcome, outcome.reason) == ("annulled", "Violation de la loi")
    assert receipt.outcome == "delivered"
    assert receipt.external_reference == outcome.acknowledgement_number
