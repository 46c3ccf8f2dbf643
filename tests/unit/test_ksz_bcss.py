"""The SSDN IdentifyPerson request against the corpus XSDs, reading CBSS replies (the
corpus's samples and the sandbox's), and the ksz_identify connector's error mapping."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from lxml import etree

from contracts.envelope import new_event
from contracts.events.urban import IdentificationRequested
from gateway.connectors.base import ConnectorContext, Delivery
from gateway.connectors.ksz_bcss import (
    Identification,
    KszBcssConnector,
    KszBcssSettings,
    ReplyError,
    create_connector,
    read_reply,
    ssdn_request,
)
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from kernel.settings import HubSettings
from sandbox import ksz_bcss
from sandbox.recorder import Recorder

KNOWN = "85073003328"
SETTINGS = KszBcssSettings(
    type="ksz_identify",
    endpoint="http://cbss/connector",
    user_id="00000000097",
    email="urbanisme@commune.example.be",
    org_unit="0207123407",
    matrix_id=17,
    matrix_sub_id=1,
)
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def schema(corpus: Path) -> etree.XMLSchema:
    return ksz_bcss.load_ssdn_schema(corpus / "contracts" / "ksz-bcss")


def request_for(**changes: Any) -> etree._Element:
    who = Identification(KNOWN, "Lambert", "Sophie", date(1985, 7, 30))
    who = Identification(**(who.__dict__ | changes))
    return etree.fromstring(ssdn_request(SETTINGS, who, "hub-ref", NOW))


def test_the_request_is_valid_against_the_ssdn_and_identify_person_xsds(
    schema: etree.XMLSchema,
) -> None:
    for request in (request_for(), request_for(birth_date=None, first_name=None)):
        assert ksz_bcss.schema_problems(schema, request) == []
    request = request_for()
    ns = {"s": ksz_bcss.SERVICE_NS, "i": ksz_bcss.IDENTIFY_NS}
    assert request.findtext("s:RequestContext/s:Message/s:TimeRequest", namespaces=ns) == (
        "20260302T093000"
    )
    assert request.findtext(".//i:SearchCriteria/i:SSIN", namespaces=ns) == KNOWN
    assert request.findtext(".//i:PersonData/i:BirthDate", namespaces=ns) == "1985-07-30"
    assert request_for(birth_date=None).find(".//i:VerificationData", namespaces=ns) is None


def test_the_schemas_catch_what_breaks_the_contract(schema: etree.XMLSchema) -> None:
    # The check that guards the builder: a wrong SSIN inside the lax xs:any is caught.
    request = request_for()
    ssin = request.find(f".//{{{ksz_bcss.IDENTIFY_NS}}}SSIN")
    assert ssin is not None
    ssin.text = "8507300332X"

    [problem] = ksz_bcss.schema_problems(schema, request)

    assert "SSIN" in problem and "pattern" in problem


def test_the_corpus_sample_replies_are_read(corpus: Path) -> None:
    fixtures = corpus / "contracts" / "ksz-bcss" / "fixtures"

    found = read_reply((fixtures / "demo_ipr_3.xml").read_bytes())
    mismatch = read_reply((fixtures / "demo_ipr_4.xml").read_bytes())

    assert found.ticket == "THTTMHHP49DGQ9V"
    assert found.answer == {
        "status": "found",
        "last_name": "MUSTERMANN",
        "first_names": "MAX MORITZ",
        "birth_date": "1938-06-01",
        "gender": "male",
        "address": "HAASSTRASSE 123 bte 12, 4700 EUPEN",
        "verification": None,
    }
    assert mismatch.answer["verification"] == "mismatch"
    with pytest.raises(ReplyError, match="31009001 When the birth date in the phonetic"):
        read_reply((fixtures / "demo_ipr_2.xml").read_bytes())


def test_the_sandbox_replies_are_valid_and_read_found_or_not_found(
    schema: etree.XMLSchema,
) -> None:
    register = ksz_bcss.load_register()

    found = ksz_bcss.identify_reply(request_for(), register[KNOWN], NOW)
    missing = ksz_bcss.identify_reply(request_for(niss="77030800535"), None, NOW)
    abroad = ksz_bcss.identify_reply(request_for(birth_date=None), register["48091231112"], NOW)

    for reply in (found, missing, abroad):
        assert ksz_bcss.schema_problems(schema, etree.fromstring(reply)) == []
    assert read_reply(found).answer["verification"] == "matched"
    assert read_reply(found).answer["address"] == "RUE DES GUILLEMINS 27 bte 3, 4000 LIEGE"
    assert read_reply(missing).answer == {
        "status": "not_found",
        "last_name": None,
        "first_names": None,
        "birth_date": None,
        "gender": None,
        "address": None,
        "verification": None,
    }
    assert read_reply(abroad).answer["address"] == "14 RUE DU LAC 1207 GENEVE SUISSE"


def test_a_reply_with_a_doctype_is_a_reply_error() -> None:
    found = ksz_bcss.identify_reply(request_for(), ksz_bcss.load_register()[KNOWN], NOW)
    root = etree.fromstring(found)
    ticket = root.find(".//{*}Ticket")
    assert ticket is not None
    # An entity declared empty cut the ticket short where any other reader sees it whole.
    ticket.text = "TICKET&x;42"
    document = etree.tostring(root).replace(b"&amp;x;", b"&x;")
    with pytest.raises(ReplyError, match="DOCTYPE"):
        read_reply(b'<!DOCTYPE SSDNReply [<!ENTITY x "">]>' + document)


def test_the_fixture_register_holds_only_valid_invented_niss(corpus: Path) -> None:
    register = ksz_bcss.load_register()  # raises on a NISS that fails its check
    samples = " ".join(
        p.read_text(encoding="utf-8")
        for p in (corpus / "contracts" / "ksz-bcss" / "fixtures").glob("*.xml")
    )
    assert register and not any(niss in samples for niss in register)


# -- the connector over a fake CBSS ---------------------------------------------------------


def soap(body: str, status: int = 200) -> httpx.Response:
    envelope = (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        f"<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )
    return httpx.Response(status, content=envelope.encode(), headers={"Content-Type": "text/xml"})


def xml_string(reply: bytes) -> str:
    element = etree.Element(f"{{{ksz_bcss.CONNECTOR_NS}}}xmlString")
    element.text = reply.decode()
    return etree.tostring(element).decode()


def fault(code: str, reason: str) -> httpx.Response:
    return soap(
        f"<soapenv:Fault><faultcode>soapenv:{code}</faultcode>"
        f"<faultstring>{reason}</faultstring></soapenv:Fault>",
        status=500,
    )


def connector(corpus: Path, handler: Any) -> KszBcssConnector:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    context = ConnectorContext("62063", HubSettings(corpus_dir=corpus), http)
    built = create_connector(context, SETTINGS.model_dump())
    assert isinstance(built, KszBcssConnector)
    return built


def delivery(niss: str = KNOWN) -> Delivery:
    data = IdentificationRequested(file_id="F-1", niss=niss, declared_last_name="Lambert")
    event = new_event(data, tenant="62063", subject="F-1", source="urn:test")
    return Delivery("e1:applicant-identification", "62063", "r", event, 1)


async def test_the_connector_returns_the_registered_identity_as_the_answer(corpus: Path) -> None:
    sent: list[bytes] = []

    def cbss(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        ssdn = ksz_bcss.ssdn_request_of(request.content)
        return soap(xml_string(ksz_bcss.identify_reply(ssdn, ksz_bcss.load_register()[KNOWN], NOW)))

    result = await connector(corpus, cbss).deliver(delivery())

    assert result.answer is not None and result.answer["last_name"] == "LAMBERT"
    assert len(result.external_reference) == 15  # the CBSS ticket
    assert b"e1:applicant-identification" not in sent[0]  # the reference is a digest


@pytest.mark.parametrize(
    ("answer", "error", "reason"),
    [
        (fault("Client", "bad request"), PermanentDeliveryError, "SOAP fault"),
        (fault("Server", "busy"), RetryableDeliveryError, "SOAP fault"),
        (httpx.Response(503, text="down"), RetryableDeliveryError, "503"),
        (soap(xml_string(b"<nope/>")), PermanentDeliveryError, "not an SSDNReply"),
    ],
)
async def test_the_connector_maps_cbss_errors(
    corpus: Path, answer: httpx.Response, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error) as raised:
        await connector(corpus, lambda request: answer).deliver(delivery())

    assert reason in str(raised.value)


async def test_a_refusal_names_the_cbss_diagnostic_with_national_numbers_masked(
    corpus: Path,
) -> None:
    refused = (corpus / "contracts" / "ksz-bcss" / "fixtures" / "demo_ipr_2.xml").read_bytes()
    refused = refused.replace(b"1938-06-00", b"SSIN 85073003328")

    with pytest.raises(PermanentDeliveryError) as raised:
        await connector(corpus, lambda request: soap(xml_string(refused))).deliver(delivery())

    assert "31009001" in str(raised.value)
    assert KNOWN not in str(raised.value)


# -- the sandbox without its schemas ------------------------------------------------------------


async def test_without_the_schemas_the_sandbox_answers_a_server_fault_saying_so(
    tmp_path: Path,
) -> None:
    app = FastAPI()
    settings = HubSettings(var_dir=tmp_path, corpus_dir=tmp_path / "no-corpus")
    app.include_router(ksz_bcss.router(Recorder(), settings))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
        answer = await http.post("/ksz-bcss/WebServiceConnector", content=b"<x/>")

    assert answer.status_code == 500
    assert b"soapenv:Server" in answer.content
    assert b"the KSZ-BCSS schemas are missing" in answer.content


def production(corpus: Path, tmp_path: Path) -> HubSettings:
    return HubSettings(
        environment="production",
        var_dir=tmp_path / "var",
        corpus_dir=corpus,
        kafka_bootstrap_servers="kafka:9092",
        database_url="postgresql://hub@db/hub",
        jwks_url="https://idp.example.be/jwks",
        jwt_issuer="https://idp.example.be",
    )


async def test_production_reaches_the_cbss_over_https_with_the_institutions_own_certificate(
    corpus: Path, tmp_path: Path
) -> None:
    async with httpx.AsyncClient() as http:
        context = ConnectorContext("62063", production(corpus, tmp_path), http)
        with pytest.raises(ValueError, match="endpoint must be https"):
            create_connector(context, SETTINGS.model_dump())
        # Over https, never the development identity: the certificate the federal PKI gave.
        https = SETTINGS.model_dump() | {"endpoint": "https://cbss.example.be/connector"}
        with pytest.raises(ValueError, match="needs key_file and cert_file in production"):
            create_connector(context, https)
    assert not context.hub.keys_dir.exists()


async def test_a_tls_identity_that_cannot_be_read_is_named_at_start(
    corpus: Path, tmp_path: Path
) -> None:
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("not PEM")
    https = SETTINGS.model_dump() | {"endpoint": "https://cbss.example.be/connector"}
    async with httpx.AsyncClient() as http:
        context = ConnectorContext("62063", HubSettings(var_dir=tmp_path, corpus_dir=corpus), http)
        for files, named in (
            ({"key_file": tmp_path / "missing.key", "cert_file": garbled}, "missing.key"),
            ({"key_file": garbled, "cert_file": garbled}, "garbled.pem"),
            ({"ca_file": tmp_path / "missing-ca.pem"}, "missing-ca.pem"),
        ):
            with pytest.raises(ValueError, match=named):
                create_connector(context, https | files)
