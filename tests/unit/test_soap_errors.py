"""How the SOAP connectors' failures become retryable or permanent (``gateway.errors``,
``gateway.connectors.soap.SharedPoolTransport``), against fake answers."""

from __future__ import annotations

import httpx
import pytest
from zeep.exceptions import Fault, TransportError, XMLSyntaxError

from gateway.connectors.soap import SharedPoolTransport
from gateway.errors import (
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
        ("soap:Server", "Business error: NO_DIGITAL_USER", PermanentDeliveryError),
        ("soap:Client", "invalid request", PermanentDeliveryError),
        ("ns:MustUnderstand", "header not understood", PermanentDeliveryError),
    ],
)
def test_a_fault_passes_when_the_server_failed_and_not_when_the_request_did(
    code: str | None, message: str, kind: type[DeliveryError]
) -> None:
    assert type(raised_by(Fault(message, code=code))) is kind


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
