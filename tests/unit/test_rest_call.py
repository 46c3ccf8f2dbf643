"""``post_delivery``, the one JSON POST of the REST connectors, against fake targets
(httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import date

import httpx
import pytest

from contracts.envelope import new_event
from contracts.events.urban import OpinionRequested
from gateway.connectors.base import Delivery, DeliveryResult
from gateway.connectors.rest import Refusal, post_delivery
from gateway.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from gateway.http import OutboundClient

URL = "https://target.test/api/things"
TARGET = "Target"


def delivery() -> Delivery:
    data = OpinionRequested(
        file_id="F-1",
        opinion_id="OP-1",
        body="SRI",
        subject="s",
        due_on=date(2026, 4, 1),
        reference="PU/2026/0012",
    )
    event = new_event(data, tenant="62063", subject="F-1", source="urn:test")
    return Delivery(
        "e1:route", "62063", "route", event, 1, trace_headers={"traceparent": "00-abc-def-01"}
    )


async def post(
    handler: Callable[[httpx.Request], httpx.Response],
    refusals: Mapping[int, Refusal] | None = None,
    subject: str | None = None,
    client: type[httpx.AsyncClient] = httpx.AsyncClient,
) -> DeliveryResult:
    async with client(transport=httpx.MockTransport(handler)) as http:
        return await post_delivery(
            http,
            URL,
            {"name": "value"},
            delivery=delivery(),
            target=TARGET,
            api_key_headers={"X-Api-Key": "k3y"},
            timeout=httpx.Timeout(5.0),
            reference_field="thingId",
            refusals=refusals,
            subject=subject,
        )


async def test_a_json_answer_gives_the_external_reference() -> None:
    seen: list[httpx.Request] = []

    def target(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"thingId": "T-1"})

    assert await post(target) == DeliveryResult(external_reference="T-1")
    [request] = seen
    assert (request.method, str(request.url)) == ("POST", URL)
    assert json.loads(request.content) == {"name": "value"}
    assert request.headers["X-Api-Key"] == "k3y"
    assert request.headers["Idempotency-Key"] == "e1:route"
    assert request.headers["traceparent"] == "00-abc-def-01"
    assert request.extensions["timeout"]["read"] == 5.0


async def test_a_503_is_retryable() -> None:
    with pytest.raises(RetryableDeliveryError, match="HTTP 503: Target: busy"):
        await post(lambda request: httpx.Response(503, text="busy"))


async def test_a_problem_json_400_is_permanent_with_its_detail() -> None:
    problem = {"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "no name"}

    def target(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json=problem, headers={"Content-Type": "application/problem+json"}
        )

    with pytest.raises(PermanentDeliveryError, match="HTTP 400: Target: no name"):
        await post(target)


async def test_a_connect_error_is_retryable() -> None:
    def target(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(RetryableDeliveryError, match="Target unreachable: connection refused"):
        await post(target)


async def test_a_401_is_retried_while_the_key_is_fixed_and_names_it() -> None:
    with pytest.raises(RetryableDeliveryError, match=r"^The target refused the hub's API key"):
        await post(lambda request: httpx.Response(401), subject="The target")


async def test_a_refusal_of_the_connector_comes_before_the_generic_mapping() -> None:
    def closed(answer: httpx.Response) -> str:
        return f"closed ({answer.json()['detail']})"

    with pytest.raises(PermanentDeliveryError, match=r"^closed \(gone\)$"):
        await post(lambda request: httpx.Response(409, json={"detail": "gone"}), {409: closed})


async def test_a_success_without_the_reference_is_retryable() -> None:
    with pytest.raises(RetryableDeliveryError, match="Target answered with no thingId"):
        await post(lambda request: httpx.Response(201, json={"status": "ok"}))


@pytest.mark.parametrize(
    ("retry_after", "asked"),
    [("120", 120.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None), ("99999999", 86400.0)],
)
async def test_a_429_carries_the_wait_the_target_asked_for(
    retry_after: str, asked: float | None
) -> None:
    def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, text="slow down", headers={"Retry-After": retry_after})

    with pytest.raises(RetryableDeliveryError) as raised:
        await post(busy)
    assert raised.value.retry_after_seconds == asked


async def test_a_national_number_in_the_targets_answer_is_masked_in_the_reason() -> None:
    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"detail": "unknown person 85073003328"})

    with pytest.raises(PermanentDeliveryError) as raised:
        await post(refusing)
    assert "85073003328" not in raised.value.reason and "85*********" in raised.value.reason


#: JSON nested deeper than Python's parser recurses: ``response.json()`` raises
#: RecursionError, which is no ValueError.
NESTED_TOO_DEEP = b"[" * 100_000


async def test_an_answer_nested_too_deep_to_read_is_classified_as_any_other() -> None:
    with pytest.raises(PermanentDeliveryError, match=r"^HTTP 422: Target: \[\[\["):
        await post(lambda request: httpx.Response(422, content=NESTED_TOO_DEEP))
    with pytest.raises(RetryableDeliveryError, match="Target answered with no thingId"):
        await post(lambda request: httpx.Response(201, content=NESTED_TOO_DEEP))


def mislabelled(status: int, headers: Mapping[str, str] | None = None) -> httpx.Response:
    """A proxy's plain error page marked gzip: it does not decompress."""
    return httpx.Response(
        status,
        stream=httpx.ByteStream(b"<html><body>Bad Request</body></html>"),
        headers={"Content-Encoding": "gzip", **(headers or {})},
    )


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, PermanentDeliveryError),  # a refusal, however unreadable its page
        (422, PermanentDeliveryError),
        (503, RetryableDeliveryError),
        (200, RetryableDeliveryError),  # the answer itself: whether it was taken is unknown
    ],
)
async def test_an_answer_in_an_encoding_it_did_not_use_is_classified_by_its_status(
    status: int, kind: type[Exception]
) -> None:
    # Through the gateway's own client, which undoes the encodings itself (gateway.http).
    with pytest.raises(kind) as raised:
        await post(lambda request: mislabelled(status), client=OutboundClient)
    assert isinstance(raised.value, DeliveryError)
    assert "Target answered in an encoding it did not use: an answer said to be gzip" in (
        raised.value.reason
    )


async def test_an_undecodable_429_keeps_its_retry_after() -> None:
    with pytest.raises(RetryableDeliveryError) as raised:
        await post(lambda request: mislabelled(429, {"Retry-After": "120"}), client=OutboundClient)
    assert raised.value.retry_after_seconds == 120.0


async def test_an_answer_httpx_cannot_decode_itself_is_retryable() -> None:
    # A plain httpx client decodes as it reads, with no status at hand.
    with pytest.raises(RetryableDeliveryError, match="in an encoding it did not use"):
        await post(lambda request: mislabelled(400))
