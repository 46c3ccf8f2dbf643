"""The real e-Box SOAP connector (zeep, WS-Security) against the real sandbox over 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from contracts.envelope import CloudEvent, new_event
from contracts.events.courrier import OutgoingMailSendRequested, Recipient
from gateway.connectors.base import ConnectorContext, Delivery, connector_types
from gateway.connectors.ebox_soap import EboxSoapConnector, ticket_for
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.http import outbound_transport
from gateway.wssecurity import X509Signature
from kernel.pki import ensure_tenant_signing_identity
from kernel.settings import HubSettings
from sandbox.app import build_app
from sandbox.ebox_rest import load_recipients_without_ebox
from sandbox.ebox_soap import MAX_ENVELOPE_BYTES, TrustStore
from sandbox.recorder import FaultSettings, Recorder
from tests.support.servers import serving

pytestmark = pytest.mark.integration

TENANT = "92137"
PDF = b"%PDF-1.7\n% a letter from the commune\n%%EOF\n"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PERSON_WITH_EBOX = "85073003328"
PERSON_WITHOUT_EBOX = next(
    r.value for r in load_recipients_without_ebox() if r.ebox_type == "citizen"
)
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
ERRORS_XSD = Path("contracts/ebox/soap/be/socialsecurity/errors/v1/socsec-errors-schema-v1.xsd")


@dataclass
class Sandbox:
    url: str
    recorder: Recorder

    @property
    def endpoint(self) -> str:
        return f"{self.url}/ebox/soap/EboxMessage"


class Interceptor(httpx.AsyncBaseTransport):
    """The network between gateway and e-Box: may rewrite requests, keeps the answers."""

    def __init__(self, rewrite: Callable[[bytes], bytes] = lambda body: body) -> None:
        self._network = outbound_transport(max_connections=16)  # the gateway's own
        self._rewrite = rewrite
        self.answers: list[httpx.Response] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = self._rewrite(await request.aread())
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        forwarded = httpx.Request(
            request.method,
            request.url,
            headers=headers,
            content=body,
            extensions=request.extensions,
        )
        response = await self._network.handle_async_request(forwarded)
        content = await response.aread()
        await response.aclose()
        answer = httpx.Response(response.status_code, headers=response.headers, content=content)
        self.answers.append(answer)
        return answer

    async def aclose(self) -> None:
        await self._network.aclose()


@pytest.fixture
async def sandbox(corpus: Path, hub_settings: HubSettings) -> AsyncIterator[Sandbox]:
    # Started before any tenant identity exists (the connector makes it), as under `hub up`:
    # the sandbox must pick up certificates that appear after it started.
    recorder = Recorder()
    async with serving(build_app(hub_settings, recorder)) as url:
        yield Sandbox(url, recorder)


@pytest.fixture
def network() -> Interceptor:
    return Interceptor()


@pytest.fixture
async def http(network: Interceptor) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=network, timeout=10) as client:
        yield client


def connector_for(
    sandbox: Sandbox, http: httpx.AsyncClient, settings: HubSettings, **overrides: Any
) -> EboxSoapConnector:
    config = {"type": "ebox_soap", "endpoint": sandbox.endpoint} | overrides
    connector = connector_types()["ebox_soap"](ConnectorContext(TENANT, settings, http), config)
    assert isinstance(connector, EboxSoapConnector)
    return connector


@pytest.fixture
async def connector(
    sandbox: Sandbox, http: httpx.AsyncClient, hub_settings: HubSettings
) -> AsyncIterator[EboxSoapConnector]:
    connector = connector_for(sandbox, http, hub_settings)
    yield connector
    await connector.aclose()


def send_requested(
    identifier: str = PERSON_WITH_EBOX, subject: str = "Permis d'urbanisme"
) -> CloudEvent:
    data = OutgoingMailSendRequested(
        mail_id="mail-1",
        registration_number="S2026/000123",
        recipient=Recipient(kind="person", identifier=identifier),
        subject=subject,
        body_pdf_base64=base64.b64encode(PDF).decode(),
        body_pdf_md5=hashlib.md5(PDF, usedforsecurity=False).hexdigest(),
    )
    return new_event(data, tenant=TENANT, subject="mail-1", source="urn:hub:courrier")


def delivery(event: CloudEvent | None = None, key: str | None = None) -> Delivery:
    event = event or send_requested()
    return Delivery(
        idempotency_key=key or f"{event.id}:outgoing-mail-ebox",
        tenant=TENANT,
        route="outgoing-mail-ebox",
        event=event,
        attempt=1,
        trace_headers={"traceparent": TRACEPARENT},
    )


def fault_of(content: bytes) -> tuple[str, str, etree._Element | None]:
    """faultcode, faultstring and the detail's first element of a SOAP 1.1 Fault."""
    fault = etree.fromstring(content).find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    assert fault is not None, content
    detail = fault.find("detail")
    return (
        fault.findtext("faultcode") or "",
        fault.findtext("faultstring") or "",
        detail[0] if detail is not None and len(detail) else None,
    )


async def test_signed_publication_is_accepted_and_its_message_id_returned(
    sandbox: Sandbox, connector: EboxSoapConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifying_threads = []
    verify = TrustStore.verify

    def recorded_verify(store: TrustStore, envelope: bytes) -> Any:
        verifying_threads.append(threading.get_ident())
        return verify(store, envelope)

    monkeypatch.setattr(TrustStore, "verify", recorded_verify)
    work = delivery()

    result = await connector.deliver(work)

    # Verified off the event loop's thread: a large body would hold every request meanwhile.
    assert verifying_threads and threading.get_ident() not in verifying_threads

    [reception] = sandbox.recorder.receptions("ebox_soap")
    assert result.external_reference == reception.answer["message_id"]
    assert reception.tenant == TENANT  # from the verified certificate
    assert reception.traceparent == TRACEPARENT
    assert reception.summary["ticket"] == ticket_for(work.idempotency_key)
    assert reception.summary["idempotency_key_header"] == work.idempotency_key
    assert reception.summary["recipients"] == ["85*********"]  # masked
    assert reception.summary["documents"] == ["S2026-000123.pdf"]
    assert reception.summary["signed_by"] == f"O={TENANT},CN=hub-{TENANT}"


async def test_body_altered_after_signing_is_refused_with_a_signature_fault(
    sandbox: Sandbox, hub_settings: HubSettings
) -> None:
    # A man in the middle changes the signed Body (the subject) on its way to the e-Box.
    network = Interceptor(
        lambda body: body.replace(b"Permis d'urbanisme", b"Permis de d\xc3\xa9molir")
    )
    async with httpx.AsyncClient(transport=network, timeout=10) as http:
        connector = connector_for(sandbox, http, hub_settings)
        with pytest.raises(PermanentDeliveryError, match="signature does not match"):
            await connector.deliver(delivery())
        await connector.aclose()

    [answer] = network.answers
    code, reason, _ = fault_of(answer.content)
    assert (answer.status_code, code) == (500, "soapenv:Client")
    assert reason.startswith("WS-Security: the signature does not match the signed content")
    assert sandbox.recorder.receptions("ebox_soap") == []


async def test_letter_altered_on_the_way_is_refused_by_its_signed_digest(
    sandbox: Sandbox, hub_settings: HubSettings
) -> None:
    # The PDF travels outside the signed envelope; the Body's SHA-256 Digest protects it.
    network = Interceptor(lambda body: body.replace(b"from the commune", b"from a forger!!!"))
    async with httpx.AsyncClient(transport=network, timeout=10) as http:
        connector = connector_for(sandbox, http, hub_settings)
        with pytest.raises(PermanentDeliveryError, match="does not match its SHA-256 Digest"):
            await connector.deliver(delivery())
        await connector.aclose()

    assert sandbox.recorder.receptions("ebox_soap") == []


async def test_certificate_the_sandbox_does_not_trust_is_refused(
    sandbox: Sandbox, http: httpx.AsyncClient, hub_settings: HubSettings, tmp_path: Path
) -> None:
    key_file, cert_file = ensure_tenant_signing_identity(tmp_path / "not-the-hub", TENANT)
    connector = connector_for(sandbox, http, hub_settings, key_file=key_file, cert_file=cert_file)

    # Retried, not failed: the tenant's certificate is at fault, not the letter, and an
    # operator renews or registers it while the letters wait (as a REST target's 401).
    with pytest.raises(RetryableDeliveryError, match="is not trusted") as refused:
        await connector.deliver(delivery())
    await connector.aclose()
    assert "check the tenant's signing certificate" in refused.value.reason


async def test_a_letter_signed_by_a_clock_off_the_targets_is_retried_not_failed(
    sandbox: Sandbox, http: httpx.AsyncClient, hub_settings: HubSettings, monkeypatch: Any
) -> None:
    # The host's clock an hour behind: the Timestamp is stale on arrival. WS-Security's own
    # fault, wsu:MessageExpired, says so; as a soap:Client fault, every letter of the night
    # was failed for good and the citizens' mail reported as not sent.
    sign = X509Signature.sign

    def an_hour_behind(self: X509Signature, envelope: Any, now: Any = None) -> None:
        sign(self, envelope, datetime.now(UTC) - timedelta(hours=1))

    monkeypatch.setattr(X509Signature, "sign", an_hour_behind)
    connector = connector_for(sandbox, http, hub_settings)
    with pytest.raises(RetryableDeliveryError, match="MessageExpired") as refused:
        await connector.deliver(delivery())
    await connector.aclose()

    assert "the message expired at" in refused.value.reason
    assert "this host's clock" in refused.value.reason
    assert sandbox.recorder.receptions("ebox_soap") == []


async def test_same_idempotency_key_twice_publishes_once(
    sandbox: Sandbox, connector: EboxSoapConnector
) -> None:
    work = delivery()

    first = await connector.deliver(work)
    again = await connector.deliver(work)
    other = await connector.deliver(delivery(key="another-event:outgoing-mail-ebox"))

    assert again.external_reference == first.external_reference
    assert other.external_reference != first.external_reference
    receptions = {
        r.summary["idempotency_key_header"]: r for r in sandbox.recorder.receptions("ebox_soap")
    }
    assert len(receptions) == 2
    assert receptions[work.idempotency_key].arrivals == 2


async def test_recipient_without_digital_ebox_fails_for_good(
    sandbox: Sandbox, corpus: Path, connector: EboxSoapConnector, network: Interceptor
) -> None:
    with pytest.raises(PermanentDeliveryError) as failure:
        await connector.deliver(delivery(send_requested(identifier=PERSON_WITHOUT_EBOX)))

    assert failure.value.reason == "the recipient has no digital e-Box"
    assert sandbox.recorder.receptions("ebox_soap") == []
    # The fault detail is the contract's BusinessError.
    code, _, detail = fault_of(network.answers[-1].content)
    assert code == "soapenv:Client"
    assert detail is not None
    errors = etree.XMLSchema(etree.parse(str(corpus / ERRORS_XSD)))
    errors.assertValid(etree.ElementTree(detail))
    assert detail.findtext("{http://socialsecurity.be/errors/v1}Code") == "NO_DIGITAL_USER"


async def test_request_violating_the_xsd_gets_a_fault_naming_the_problem(
    sandbox: Sandbox, connector: EboxSoapConnector
) -> None:
    # An empty subject: zeep sends it, the contract's Title needs at least one character.
    with pytest.raises(PermanentDeliveryError, match=r"e-Box XSD.*Title"):
        await connector.deliver(delivery(send_requested(subject="")))

    assert sandbox.recorder.receptions("ebox_soap") == []


async def test_signed_but_invalid_request_gets_an_xsd_fault(
    sandbox: Sandbox, hub_settings: HubSettings, http: httpx.AsyncClient
) -> None:
    # Signed by a trusted tenant, but MessageType is shorter than the contract's 6 characters.
    message = "http://socialsecurity.be/eboxmessage/v1"
    types = "http://socialsecurity.be/eboxmessage/types/v1"
    envelope = etree.fromstring(
        f'<s:Envelope xmlns:s="{SOAP_ENV}"><s:Body>'
        f'<PublishEboxMessageRequest xmlns="{message}" xmlns:t="{types}">'
        "<t:MessageID><t:Ticket>t-1</t:Ticket></t:MessageID>"
        f"<t:RecipientID><t:INSS>{PERSON_WITH_EBOX}</t:INSS>"
        "<t:EboxType>CITIZEN</t:EboxType></t:RecipientID>"
        "<t:MessageType>SHORT</t:MessageType>"
        "<t:Document><t:Title>x</t:Title><t:Content>cid:a</t:Content>"
        "<t:DownloadFileName>a.pdf</t:DownloadFileName></t:Document>"
        "</PublishEboxMessageRequest></s:Body></s:Envelope>"
    )
    X509Signature.from_files(*ensure_tenant_signing_identity(hub_settings.keys_dir, TENANT)).sign(
        envelope
    )

    answer = await http.post(
        sandbox.endpoint, content=etree.tostring(envelope), headers={"Content-Type": "text/xml"}
    )

    code, reason, _ = fault_of(answer.content)
    assert (answer.status_code, code) == (500, "soapenv:Client")
    assert "e-Box XSD" in reason and "MessageType" in reason and "minimum length" in reason


async def test_unsigned_request_is_refused(sandbox: Sandbox, http: httpx.AsyncClient) -> None:
    envelope = f'<s:Envelope xmlns:s="{SOAP_ENV}"><s:Body><x/></s:Body></s:Envelope>'

    answer = await http.post(
        sandbox.endpoint, content=envelope, headers={"Content-Type": "text/xml"}
    )

    code, reason, _ = fault_of(answer.content)
    assert (answer.status_code, code) == (500, "soapenv:Client")
    assert reason == "WS-Security: the message is not signed: it has no SOAP Header"


async def test_entity_declarations_are_refused_with_a_fault(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE b [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        f'<s:Envelope xmlns:s="{SOAP_ENV}"><s:Body>&b;</s:Body></s:Envelope>'
    )

    answer = await http.post(sandbox.endpoint, content=bomb, headers={"Content-Type": "text/xml"})

    code, reason, _ = fault_of(answer.content)
    assert (answer.status_code, code) == (500, "soapenv:Client")
    assert "DOCTYPE and ENTITY declarations are not accepted" in reason


async def test_oversized_message_is_refused_with_a_fault(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    huge = b"<s:Envelope>" + b" " * MAX_ENVELOPE_BYTES + b"</s:Envelope>"

    answer = await http.post(sandbox.endpoint, content=huge, headers={"Content-Type": "text/xml"})

    code, reason, _ = fault_of(answer.content)
    assert (answer.status_code, code) == (500, "soapenv:Client")
    assert reason == f"the message is larger than {MAX_ENVELOPE_BYTES} bytes"


async def test_unavailable_or_slow_service_is_retried(
    sandbox: Sandbox, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    connector = connector_for(sandbox, http, hub_settings, timeout_seconds=0.3)

    sandbox.recorder.set_faults("ebox_soap", FaultSettings(error_rate=1.0))
    with pytest.raises(RetryableDeliveryError, match="soapenv:Server"):
        await connector.deliver(delivery())

    sandbox.recorder.set_faults("ebox_soap", FaultSettings(latency_ms=1000))
    with pytest.raises(RetryableDeliveryError, match="timed out"):
        await connector.deliver(delivery())
    await connector.aclose()


async def test_a_message_of_too_many_parts_is_refused_before_they_are_read(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    parts = b"".join(b"--b\r\nContent-ID: <p%d>\r\n\r\nx\r\n" % n for n in range(200))
    answer = await http.post(
        sandbox.endpoint,
        content=parts + b"--b--\r\n",
        headers={"Content-Type": 'multipart/related; type="text/xml"; boundary="b"'},
    )

    code, reason, _ = fault_of(answer.content)
    assert (answer.status_code, code) == (500, "soapenv:Client")
    assert reason == "the multipart/related message has more than 64 parts"


async def test_wsdl_is_served_with_this_endpoint_and_its_schemas(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    wsdl = etree.fromstring((await http.get(f"{sandbox.endpoint}?wsdl")).content)

    [address] = wsdl.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address.get("location") == sandbox.endpoint
    locations = [
        node.get("schemaLocation") or ""
        for node in wsdl.iter("{http://www.w3.org/2001/XMLSchema}import")
    ]
    assert "?xsd=be/socialsecurity/eboxmessage/v1/EboxMessage_v1.xsd" in locations
    schema = await http.get(f"{sandbox.endpoint}{locations[0]}")
    assert schema.status_code == 200
    assert etree.fromstring(schema.content).tag == "{http://www.w3.org/2001/XMLSchema}schema"
    outside = await http.get(f"{sandbox.endpoint}?xsd=../../../../README.md")
    assert outside.status_code == 404
