"""The accounting connectors: Inforius against a fake API (httpx.MockTransport), Stésud
against a temporary drop directory."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from lxml import etree

from contracts.envelope import CloudEvent
from gateway.connectors.base import ConnectorContext, Delivery, connector_types
from gateway.connectors.inforius import InforiusConnector
from gateway.connectors.stesud import (
    FILE_THREADS,
    NAMESPACE,
    SCHEMA_PATH,
    StesudConnector,
    file_name,
)
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.main import register_built_in_connectors
from kernel.settings import REPOSITORY_ROOT, HubSettings
from sandbox.openapi_contract import OpenApiContract, contract_errors
from tests.support.invoices import UBL, approved_invoice, invoice_response_requested

KEY = "e1:approved-invoice-accounting"
INFORIUS_CONTRACT = REPOSITORY_ROOT / "contracts" / "vendors" / "inforius-openapi.yaml"


def delivery(event: CloudEvent, key: str = KEY) -> Delivery:
    return Delivery(
        idempotency_key=key,
        tenant=event.tenant,
        route="approved-invoice-accounting",
        event=event,
        attempt=1,
    )


def build(
    type_name: str,
    tenant: str,
    config: dict[str, object],
    http: httpx.AsyncClient,
    var_dir: Path = Path("var"),
) -> object:
    register_built_in_connectors()
    context = ConnectorContext(tenant, HubSettings(var_dir=var_dir), http)
    return connector_types()[type_name](context, {"type": type_name, **config})


# -- Inforius ---------------------------------------------------------------------------------


class FakeInforius:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: list[httpx.Response | Exception] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = (
            self.answers.pop(0)
            if self.answers
            else httpx.Response(
                201,
                json={
                    "bookingReference": "INF/62063/2026/000007",
                    "status": "BOOKED",
                    "bookedAt": "2026-11-23T10:00:00+00:00",
                },
            )
        )
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def inforius() -> FakeInforius:
    return FakeInforius()


@pytest.fixture
async def inforius_connector(inforius: FakeInforius) -> AsyncIterator[InforiusConnector]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(inforius.handle)) as http:
        built = build(
            "inforius", "62063", {"base_url": "https://inforius.test/api/v2/", "api_key": "k"}, http
        )
        assert isinstance(built, InforiusConnector)
        yield built


async def test_inforius_books_the_invoice_as_its_contract_describes(
    inforius: FakeInforius, inforius_connector: InforiusConnector
) -> None:
    result = await inforius_connector.deliver(delivery(approved_invoice()))

    assert result.external_reference == "INF/62063/2026/000007"
    [request] = inforius.requests
    assert str(request.url) == "https://inforius.test/api/v2/purchase-invoices"
    assert request.headers["X-API-Key"] == "k"
    assert request.headers["Idempotency-Key"] == KEY
    body = json.loads(request.content)
    validator = OpenApiContract(INFORIUS_CONTRACT).validator("PurchaseInvoice")
    assert contract_errors(validator, body) == []
    assert body["administration"] == "62063"
    assert body["externalReference"] == "inv-1"
    assert body["supplier"] == {
        "name": "Travaux Mosans SA",
        "vatNumber": "BE0406798006",
        "enterpriseNumber": "0406798006",
        "iban": "BE71096123456769",
    }
    assert body["totals"] == {"taxExclusive": "1000.00", "tax": "210.00", "payable": "1210.00"}
    assert body["lines"][0]["quantity"] == "40"
    assert base64.b64decode(body["ubl"]["contentBase64"]) == UBL
    assert body["ubl"]["filename"] == "F-2026-0042.xml"


async def test_both_vendors_take_a_quantity_to_more_decimals_than_an_amount(
    inforius: FakeInforius, inforius_connector: InforiusConnector, tmp_path: Path
) -> None:
    # 1234.567891 litres of fuel: valid EN 16931 (BT-129 sets no precision), once refused
    # for good by both vendors' contracts, which took a quantity for an amount.
    litres = Decimal("1234.567891")
    await inforius_connector.deliver(delivery(approved_invoice(quantity=litres)))
    body = json.loads(inforius.requests[0].content)
    validator = OpenApiContract(INFORIUS_CONTRACT).validator("PurchaseInvoice")
    assert contract_errors(validator, body) == []
    assert body["lines"][0]["quantity"] == "1234.567891"

    async with httpx.AsyncClient() as http:
        stesud = build("stesud", "92137", {}, http, tmp_path / "var")
        assert isinstance(stesud, StesudConnector)
        with pytest.raises(RetryableDeliveryError, match="has not acknowledged"):
            await stesud.deliver(delivery(approved_invoice(tenant="92137", quantity=litres)))
    written = etree.fromstring((stesud.directory / "in" / file_name(KEY)).read_bytes())
    assert etree.XMLSchema(etree.parse(str(SCHEMA_PATH))).validate(written)
    assert written.findtext(f".//{{{NAMESPACE}}}Quantity") == "1234.567891"


async def test_a_quantity_written_with_trailing_zeros_is_booked_as_its_value(
    inforius: FakeInforius, inforius_connector: InforiusConnector
) -> None:
    # 2.5 written to 12 decimals (valid UBL): past the 10 Inforius's pattern takes, and
    # refused for good, though its value needs one.
    await inforius_connector.deliver(delivery(approved_invoice(quantity=Decimal("2.500000000000"))))
    body = json.loads(inforius.requests[0].content)
    validator = OpenApiContract(INFORIUS_CONTRACT).validator("PurchaseInvoice")
    assert contract_errors(validator, body) == []
    assert body["lines"][0]["quantity"] == "2.5"


async def test_a_quantity_past_the_packages_decimals_and_a_vat_number_with_dots_are_booked(
    inforius: FakeInforius, inforius_connector: InforiusConnector, tmp_path: Path
) -> None:
    # Both valid EN 16931, both once refused for good by the packages' contracts: 13
    # decimals of kilowatt-hours, and the VAT number as Belgian letters write it.
    kwh = Decimal("1234.1234567890123")
    invoice = approved_invoice(quantity=kwh, vat_id="be 0406.798-006")
    await inforius_connector.deliver(delivery(invoice))
    body = json.loads(inforius.requests[0].content)
    validator = OpenApiContract(INFORIUS_CONTRACT).validator("PurchaseInvoice")
    assert contract_errors(validator, body) == []
    assert body["lines"][0]["quantity"] == "1234.123456789"
    assert body["supplier"]["vatNumber"] == "BE0406798006"

    async with httpx.AsyncClient() as http:
        stesud = build("stesud", "92137", {}, http, tmp_path / "var")
        assert isinstance(stesud, StesudConnector)
        with pytest.raises(RetryableDeliveryError, match="has not acknowledged"):
            await stesud.deliver(
                delivery(approved_invoice(tenant="92137", quantity=kwh, vat_id="BE 0406.798.006"))
            )
    written = etree.fromstring((stesud.directory / "in" / file_name(KEY)).read_bytes())
    assert etree.XMLSchema(etree.parse(str(SCHEMA_PATH))).validate(written)
    assert written.findtext(f".//{{{NAMESPACE}}}Quantity") == "1234.123456789"
    assert written.findtext(f".//{{{NAMESPACE}}}VatNumber") == "BE0406798006"


@pytest.mark.parametrize(
    ("answer", "error", "reason"),
    [
        (
            httpx.Response(
                422,
                json={
                    "code": "UNKNOWN_SUPPLIER",
                    "detail": "The supplier with VAT number BE0999999962 is not in the file",
                },
            ),
            PermanentDeliveryError,
            "HTTP 422: Inforius: The supplier with VAT number BE0999999962 is not in the file",
        ),
        (httpx.Response(400, json={"detail": "lines: []"}), PermanentDeliveryError, "lines"),
        (httpx.Response(401, json={}), RetryableDeliveryError, "refused the hub's API key"),
        (httpx.Response(500, text="oops"), RetryableDeliveryError, "HTTP 500: Inforius: oops"),
        (httpx.Response(503, json={"detail": "x"}), RetryableDeliveryError, "HTTP 503"),
        (httpx.Response(429, json={"detail": "x"}), RetryableDeliveryError, "HTTP 429"),
        (httpx.ConnectTimeout("slow"), RetryableDeliveryError, "Inforius timed out"),
        (httpx.ConnectError("refused"), RetryableDeliveryError, "Inforius unreachable"),
        (httpx.Response(201, json={"status": "BOOKED"}), RetryableDeliveryError, "no booking"),
    ],
)
async def test_inforius_answers_map_to_delivery_errors(
    inforius: FakeInforius,
    inforius_connector: InforiusConnector,
    answer: httpx.Response | Exception,
    error: type[Exception],
    reason: str,
) -> None:
    inforius.answers.append(answer)

    with pytest.raises(error) as raised:
        await inforius_connector.deliver(delivery(approved_invoice()))

    assert reason in str(raised.value)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (invoice_response_requested(), "factures.invoice.approved.v1 only"),
        (approved_invoice(vat_id=None), "this invoice has none (BT-31)"),
        (approved_invoice(ubl_base64="not base64!"), "UBL document is not valid base64"),
    ],
)
async def test_inforius_refuses_what_it_cannot_book_before_sending(
    inforius: FakeInforius, inforius_connector: InforiusConnector, event: CloudEvent, reason: str
) -> None:
    with pytest.raises(PermanentDeliveryError) as raised:
        await inforius_connector.deliver(delivery(event))

    assert reason in str(raised.value)
    assert inforius.requests == []


async def test_inforius_settings_are_checked_without_printing_the_key() -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValueError) as raised:
            build("inforius", "62063", {"api_key": "s3cret", "base_url": 1}, http)
    assert str(raised.value) == (
        "tenant 62063: inforius settings: base_url: Input should be a valid string"
    )


# -- Stésud -----------------------------------------------------------------------------------


@pytest.fixture
async def stesud(tmp_path: Path) -> AsyncIterator[StesudConnector]:
    async with httpx.AsyncClient() as http:
        built = build("stesud", "92137", {"drop_dir": ""}, http, var_dir=tmp_path / "var")
        assert isinstance(built, StesudConnector)
        yield built
        await built.aclose()


def acknowledge(connector: StesudConnector, name: str, body: str) -> None:
    out = connector.directory / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / (name.removesuffix(".xml") + ".ack.xml")).write_text(
        f'<Acknowledgement xmlns="{NAMESPACE}" file="{name}">{body}'
        "<ProcessedAt>2026-11-23T10:00:00+00:00</ProcessedAt></Acknowledgement>",
        encoding="utf-8",
    )


async def test_stesud_writes_the_file_once_then_waits_for_the_acknowledgement(
    stesud: StesudConnector, tmp_path: Path
) -> None:
    assert stesud.directory == tmp_path / "var" / "stesud" / "92137"  # the sandbox's default
    name = file_name(KEY)

    with pytest.raises(RetryableDeliveryError) as first:
        await stesud.deliver(delivery(approved_invoice(tenant="92137")))
    assert "has not acknowledged" in str(first.value)
    written = stesud.directory / "in" / name
    content = written.read_bytes()
    document = etree.fromstring(content)
    assert etree.XMLSchema(etree.parse(str(SCHEMA_PATH))).validate(document)
    assert document.get("administration") == "92137"
    assert document.findtext(f"{{{NAMESPACE}}}Totals/{{{NAMESPACE}}}Payable") == "1210.00"

    written.write_bytes(b"<changed/>")  # a second write would overwrite this
    with pytest.raises(RetryableDeliveryError):
        await stesud.deliver(delivery(approved_invoice(tenant="92137")))
    assert written.read_bytes() == b"<changed/>"
    assert [p.name for p in (stesud.directory / "in").iterdir()] == [name]


async def test_stesud_does_not_write_again_a_file_it_already_processed(
    stesud: StesudConnector,
) -> None:
    with pytest.raises(RetryableDeliveryError):
        await stesud.deliver(delivery(approved_invoice(tenant="92137")))
    done = stesud.directory / "done"
    done.mkdir()
    (stesud.directory / "in" / file_name(KEY)).rename(done / file_name(KEY))

    with pytest.raises(RetryableDeliveryError) as raised:
        await stesud.deliver(delivery(approved_invoice(tenant="92137")))

    assert "already written" in str(raised.value)
    assert list((stesud.directory / "in").iterdir()) == []


async def test_a_booked_acknowledgement_gives_the_booking_reference(
    stesud: StesudConnector,
) -> None:
    acknowledge(
        stesud,
        file_name(KEY),
        "<Status>BOOKED</Status><BookingReference>STS-92137-2026-00001</BookingReference>",
    )

    result = await stesud.deliver(delivery(approved_invoice(tenant="92137")))

    assert result.external_reference == "STS-92137-2026-00001"


async def test_a_rejection_is_permanent_with_stesuds_reason(stesud: StesudConnector) -> None:
    acknowledge(
        stesud,
        file_name(KEY),
        '<Status>REJECTED</Status><Reason code="UNKNOWN_SUPPLIER">the supplier with VAT'
        " number BE0999999962 is not in the supplier file</Reason>",
    )

    with pytest.raises(PermanentDeliveryError) as raised:
        await stesud.deliver(delivery(approved_invoice(tenant="92137")))

    assert "UNKNOWN_SUPPLIER: the supplier with VAT number BE0999999962" in str(raised.value)


async def test_an_acknowledgement_breaking_the_contract_is_retried(
    stesud: StesudConnector,
) -> None:
    acknowledge(stesud, file_name(KEY), "<Status>MAYBE</Status>")

    with pytest.raises(RetryableDeliveryError) as raised:
        await stesud.deliver(delivery(approved_invoice(tenant="92137")))

    assert "breaks the contract" in str(raised.value)


async def test_an_acknowledgement_with_a_doctype_is_retried(stesud: StesudConnector) -> None:
    acknowledge(
        stesud,
        file_name(KEY),
        "<Status>BOOKED</Status><BookingReference>STS-92137&x;-2026-00001</BookingReference>",
    )
    path = stesud.directory / "out" / (file_name(KEY).removesuffix(".xml") + ".ack.xml")
    # An entity declared empty cut the reference short where Stésud's reads it whole.
    path.write_bytes(b'<!DOCTYPE Acknowledgement [<!ENTITY x "">]>' + path.read_bytes())

    with pytest.raises(RetryableDeliveryError, match="unreadable: a DOCTYPE is not accepted"):
        await stesud.deliver(delivery(approved_invoice(tenant="92137")))


async def test_each_idempotency_key_has_its_own_file(stesud: StesudConnector) -> None:
    for key in ("e1:approved-invoice-accounting", "e2:approved-invoice-accounting"):
        with pytest.raises(RetryableDeliveryError):
            await stesud.deliver(delivery(approved_invoice(tenant="92137"), key=key))

    assert len(list((stesud.directory / "in").iterdir())) == 2


async def test_a_burst_of_invoices_shares_the_connectors_threads(stesud: StesudConnector) -> None:
    # The engine runs up to 8 attempts at once on a target: more than the file threads,
    # queued behind them on a healthy share, none refused.
    async def attempt(number: int) -> BaseException | None:
        work = delivery(approved_invoice(tenant="92137"), key=f"e{number}:approved")
        try:
            await stesud.deliver(work)
        except RetryableDeliveryError as exc:
            return exc
        return None

    refusals = await asyncio.gather(*(attempt(number) for number in range(12)))

    assert all("not acknowledged" in str(refusal) for refusal in refusals)
    assert len(list((stesud.directory / "in").iterdir())) == 12


async def test_a_hung_drop_share_holds_only_the_connectors_own_threads(
    stesud: StesudConnector,
) -> None:
    # A hard NFS/SMB mount that stops answering: each read blocks its thread for good,
    # and the engine's deadline (here 0.2 s) cuts the attempt, not the thread.
    hang = threading.Event()
    threads: list[str] = []

    def share_hangs(name: str) -> None:
        threads.append(threading.current_thread().name)
        hang.wait()

    stesud._acknowledgement = share_hangs  # type: ignore[method-assign]
    stesud.share_stuck_seconds = 0.1
    try:
        outcomes = []
        for number in range(8):
            work = delivery(approved_invoice(tenant="92137"), key=f"e{number}:approved")
            try:
                async with asyncio.timeout(0.2):
                    await stesud.deliver(work)
            except (TimeoutError, RetryableDeliveryError) as exc:
                outcomes.append(exc)

        # Once its threads have all waited too long, an attempt is refused at once.
        assert isinstance(outcomes[-1], RetryableDeliveryError)
        assert "the drop share is not answering" in outcomes[-1].reason
        # Without a deadline of the engine's: refused, not queued behind the stuck threads.
        with pytest.raises(RetryableDeliveryError, match="drop share is not answering"):
            async with asyncio.timeout(5):
                await stesud.deliver(delivery(approved_invoice(tenant="92137")))
        # The default executor is free: DNS lookups (aiohttp's ThreadedResolver) answer.
        async with asyncio.timeout(3):
            await asyncio.get_running_loop().getaddrinfo("localhost", 443)
        # Only the connector's own threads ever waited on the share; the attempts queued
        # behind them were cancelled by their deadline before they ran.
        assert len(threads) == FILE_THREADS
        assert all(name.startswith("stesud-92137") for name in threads)
    finally:
        hang.set()
