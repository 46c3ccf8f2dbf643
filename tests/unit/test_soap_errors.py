"""How the SOAP connectors' failures become retryable or permanent (``gateway.errors``,
``gateway.connectors.soap.SharedPoolTransport``), against fake answers."""

from __future__ import annotations

import httpx
import pytest
from lxml import etree
from zeep.exceptions import Fault, TransportError, XMLSyntaxError

from gateway.connectors.ebox_soap import business_error_code
from gateway.connectors.soap import SharedPoolTransport
from gateway.errors import (
    SOCSEC_ERRORS_NS,
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    translate_transport_errors,
)
from gateway.http import ResponseTooLarge

PROXY_PAGE = b"<error><code>503</code><message>backend down</message></error>"


def raised_by(error: Exception) -> DeliveryError:
    with pytest.raises(DeliveryError) as raised, translate_transport_errors("Target"):
        raise error
    return raised.value


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        ("soap:Server", "database unavailable", RetryableDeliveryError),
        ("soapenv:Server.Busy", "try later", RetryableDeliveryError),
        ("{http://www.w3.org/2003/05/soap-envelope}Receiver", "overloaded", RetryableDeliveryError),
        (None, "Unknown fault occured", RetryableDeliveryError),  # XML that is no Fault
        # No word of the message decides (the "Business layer" of a server may be down).
        (
            "soap:Server",
            "Unexpected error in the Business layer, try later",
            RetryableDeliveryError,
        ),
        ("soap:Client", "invalid request", PermanentDeliveryError),
        ("ns:MustUnderstand", "header not understood", PermanentDeliveryError),
    ],
)
def test_a_fault_passes_when_the_server_failed_and_not_when_the_request_did(
    code: str | None, message: str, kind: type[DeliveryError]
) -> None:
    assert type(raised_by(Fault(message, code=code))) is kind


def socsec_detail(kind: str, retry: str | None, code: str = "RECIPIENT_UNKNOWN") -> etree._Element:
    """A fault's ``detail`` holding the e-Box contract's error (socsec-errors-schema-v1)."""
    detail = etree.Element("detail")
    error = etree.SubElement(
        detail, f"{{{SOCSEC_ERRORS_NS}}}{kind}", nsmap={"err": SOCSEC_ERRORS_NS}
    )
    etree.SubElement(error, f"{{{SOCSEC_ERRORS_NS}}}Origin").text = "consumer"
    etree.SubElement(error, f"{{{SOCSEC_ERRORS_NS}}}Code").text = code
    etree.SubElement(error, f"{{{SOCSEC_ERRORS_NS}}}Message").text = "as the service says"
    if retry is not None:
        etree.SubElement(error, f"{{{SOCSEC_ERRORS_NS}}}Retry").text = retry
    return detail


@pytest.mark.parametrize(
    ("code", "message", "kind", "retry", "expected"),
    [
        # The contract's detail decides over the faultcode and the words of the message.
        ("soapenv:Server", "Recipient unknown", "BusinessError", "false", PermanentDeliveryError),
        ("soapenv:Server", "Recipient unknown", "BusinessError", None, PermanentDeliveryError),
        ("soapenv:Client", "Mailbox locked", "BusinessError", "true", RetryableDeliveryError),
        (
            "soapenv:Server",
            "Unexpected error in the Business layer, try later",
            "SystemError",
            "true",
            RetryableDeliveryError,
        ),
        ("soapenv:Client", "Backend down", "SystemError", None, RetryableDeliveryError),
        ("soapenv:Server", "Not configured for you", "SystemError", "0", PermanentDeliveryError),
    ],
)
def test_the_contracts_error_detail_decides(
    code: str, message: str, kind: str, retry: str | None, expected: type[DeliveryError]
) -> None:
    error = raised_by(Fault(message, code=code, detail=socsec_detail(kind, retry)))
    assert type(error) is expected
    assert f"({kind} RECIPIENT_UNKNOWN, origin consumer)" in error.reason


@pytest.mark.parametrize(
    ("code", "message", "subcodes"),
    [
        ("wsse:FailedAuthentication", "The security token could not be authenticated", None),
        ("wsse:InvalidSecurity", "An error was discovered processing the header", None),
        ("wsu:MessageExpired", "The message has expired", None),
        (
            "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd}"
            "InvalidSecurityToken",
            "An invalid security token was provided",
            None,
        ),
        # SOAP 1.2: WS-Security's code is a subcode of env:Sender.
        (
            "env:Sender",
            "The security token could not be authenticated",
            [
                etree.QName(
                    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
                    "FailedAuthentication",
                )
            ],
        ),
        # The sandboxes' words (gateway.wssecurity) for a certificate they refuse.
        ("soapenv:Client", "WS-Security: the signing certificate (CN=x) is not valid now", None),
        ("soapenv:Client", "WS-Security: the signing certificate (CN=x, …) is not trusted", None),
    ],
)
def test_a_refused_ws_security_is_retried_and_points_at_the_certificate_or_the_clock(
    code: str, message: str, subcodes: list[etree.QName] | None
) -> None:
    # As a REST target's 401: the tenant's certificate or the host's clock is at fault, not
    # the document, and an operator fixes them while the letters wait.
    error = raised_by(Fault(message, code=code, subcodes=subcodes))
    assert isinstance(error, RetryableDeliveryError)
    assert "certificate" in error.reason and "clock" in error.reason


def test_a_client_fault_about_the_signature_itself_stays_permanent() -> None:
    error = raised_by(
        Fault("WS-Security: the signature does not match the signed content", code="soap:Client")
    )
    assert isinstance(error, PermanentDeliveryError)


def test_the_ebox_connector_reads_no_business_code_in_an_unknown_fault() -> None:
    # zeep's "Unknown fault" (XML that is no Fault) carries the answer as text: read as an
    # element, str.find gave -1 and the connector crashed instead of retrying.
    assert business_error_code(Fault("Unknown fault occured", detail="<Envelope/>")) is None
    system = Fault("down", code="soapenv:Server", detail=socsec_detail("SystemError", "true"))
    assert business_error_code(system) is None
    business = socsec_detail("BusinessError", "false", code="NO_DIGITAL_USER")
    assert business_error_code(Fault("no e-Box", detail=business)) == "NO_DIGITAL_USER"


def test_an_answer_that_is_not_xml_is_retried() -> None:
    error = raised_by(XMLSyntaxError("Premature end of data"))
    assert isinstance(error, RetryableDeliveryError)
    assert "no SOAP message" in error.reason
    # zeep's own wrapping of an answer cut short, with the status it came with (200).
    cut = raised_by(TransportError("Server returned response (200) with invalid XML", 200))
    assert isinstance(cut, RetryableDeliveryError) and "no SOAP message" in cut.reason
    # The tenant's credentials refused: retried while an operator fixes them.
    assert isinstance(raised_by(TransportError("Unauthorized", 401)), RetryableDeliveryError)
    assert isinstance(raised_by(TransportError("Forbidden", 403)), PermanentDeliveryError)


def test_a_fault_naming_a_national_number_is_masked() -> None:
    error = raised_by(Fault("SSIN 85073003328 is not in the register", code="soapenv:Client"))
    assert "85073003328" not in error.reason and "85*********" in error.reason


@pytest.mark.parametrize("status", [502, 503, 504, 429, 408])
async def test_an_http_error_of_the_way_is_retryable_before_zeep_reads_its_body(
    status: int,
) -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": "text/xml", "Retry-After": "30"}
        return httpx.Response(status, content=PROXY_PAGE, headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(proxy)) as http:
        transport = SharedPoolTransport(http, timeout_seconds=5)
        with pytest.raises(RetryableDeliveryError) as raised:
            await transport.post("https://target.test/soap", b"<Envelope/>", {})
    assert raised.value.reason.startswith(f"HTTP {status}")
    assert raised.value.retry_after_seconds == 30.0


async def test_a_500_is_left_to_zeep_which_reads_its_fault() -> None:
    fault = b"<Envelope><Body><Fault><faultcode>Client</faultcode></Fault></Body></Envelope>"

    def service(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, content=fault, headers={"Content-Type": "text/xml"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(service)) as http:
        response = await SharedPoolTransport(http, timeout_seconds=5).post(
            "https://target.test/soap", b"<Envelope/>", {}
        )
    assert response.status_code == 500 and response.content == fault


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, RetryableDeliveryError),  # the answer itself: whether it was taken is unknown
        (503, RetryableDeliveryError),
        (422, PermanentDeliveryError),  # a refusal, however long its error page
        (404, PermanentDeliveryError),
    ],
)
def test_an_answer_too_long_to_read_is_classified_by_its_status(
    status: int, kind: type[DeliveryError]
) -> None:
    request = httpx.Request("POST", "https://target.test/soap")
    error = raised_by(ResponseTooLarge("an answer over 16 MiB", request=request, status=status))
    assert type(error) is kind
    assert "Target answered with too much" in error.reason
