"""Simulated KSZ-BCSS ``WebServiceConnector``: ``IdentifyPerson`` on a fictitious register.

Modelled on the contracts in the reference corpus (read at run time from
``HubSettings.corpus_dir``/``contracts/ksz-bcss``, never copied): the WSDL's
``sendXML`` (SOAP 1.1, one ``xmlString`` carrying an SSDN document as text),
the SSDN request/reply envelope and the ``OCMW_CPAS/IdentifyPerson`` schemas.
``POST /ksz-bcss/WebServiceConnector``:

1. the SOAP envelope is read (no DTD, no entities) and its ``xmlString``
   parsed as the ``SSDNRequest``;
2. the request is validated against the SSDN XSDs, ``IdentifyPersonRequest``
   included (the envelope's ``xs:any`` is lax, so the schema set validates it
   as soon as it knows the element) → ``soap:Client`` Fault naming the
   problems (national numbers masked);
3. the SSIN is looked up in ``sandbox/fixtures/national_register.yaml``
   (invented persons) and the answer is an ``SSDNReply`` shaped like the
   CBSS's sample replies (``fixtures/demo_ipr_*.xml`` of the corpus): the
   person's ``LimitedLegalData`` when registered, no ``SearchResults`` when
   not; with ``VerificationData`` the reply says whether the declared data
   match (reason codes 12007001 validated / 22007007 mismatch).

**When the schemas are absent** (no corpus beside the checkout, or
``HUB_CORPUS_DIR`` wrong) the sandbox says so once at start and answers every
request with a ``soap:Server`` Fault explaining it: it cannot check a request
without them, and answering unchecked would hide a connector's mistakes.
A server fault is retryable for the gateway, so identifications wait rather
than fail.

Authentication: the real service knows the institution by its TLS client
certificate. Reached through the sandbox's TLS listener (``sandbox.tls``: a
tenant's development certificate required, or no handshake), a request is
recorded with the certificate's subject and tenant; through the plain
listener (the in-process tests' sandbox has no other), with none.

Idempotency: a repeated ``Idempotency-Key`` gets the first reply (the real
service knows nothing of the header; an identification is a read anyway). The
key is the institution's (the TLS client's tenant), and is bound to what was
asked: the same key for another person, other verification data or another
user is refused with a ``soap:Client`` fault, as the REST sandboxes refuse a
reused key, rather than answered with the first person's identity.
Faults are those set for service ``ksz_bcss``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Request, Response
from lxml import etree

from contracts.identifiers import check_niss, mask_niss
from kernel.logs import mask_national_numbers
from kernel.settings import HubSettings
from kernel.xml_parsing import safe_parser
from sandbox.recorder import Recorder
from sandbox.tls import client_tenant

log = logging.getLogger(__name__)
SERVICE = "ksz_bcss"
CONTRACT_ROOT = Path("contracts/ksz-bcss")
SCHEMA_ROOTS = ("SSDN/Service/NamespaceRoot.xsd", "SSDN/OCMW_CPAS/IdentifyPerson/NamespaceRoot.xsd")
REGISTER = Path(__file__).parent / "fixtures" / "national_register.yaml"
MAX_ENVELOPE_BYTES = 1024 * 1024

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
CONNECTOR_NS = "http://ksz-bcss.fgov.be/connectors/WebServiceConnector"
SERVICE_NS = "http://www.ksz-bcss.fgov.be/XSD/SSDN/Service"
COMMON_NS = "http://www.ksz-bcss.fgov.be/XSD/SSDN/Common"
IDENTIFY_NS = "http://www.ksz-bcss.fgov.be/XSD/SSDN/OCMW_CPAS/IdentifyPerson"
SERVICE_ID = "OCMWCPASIdentifyPerson"
BELGIUM = "150"
XML_MEDIA_TYPE = "text/xml; charset=utf-8"

_S = f"{{{SERVICE_NS}}}"
_C = f"{{{COMMON_NS}}}"
_I = f"{{{IDENTIFY_NS}}}"


class ClientFault(Exception):
    """The request is wrong; answered as a ``soap:Client`` fault with this reason."""


# -- contracts and fixtures ---------------------------------------------------------------


def load_ssdn_schema(contract_root: Path) -> etree.XMLSchema:
    """The SSDN envelope and IdentifyPerson schemas as one set (requests and replies)."""
    imports = "".join(
        f'<xs:import namespace="{namespace}" schemaLocation="{(contract_root / path).as_uri()}"/>'
        for namespace, path in zip((SERVICE_NS, IDENTIFY_NS), SCHEMA_ROOTS, strict=True)
    )
    wrapper = (
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        f'targetNamespace="urn:hub:ssdn-set">{imports}</xs:schema>'
    )
    return etree.XMLSchema(etree.fromstring(wrapper, etree.XMLParser(no_network=True)))


def schema_problems(schema: etree.XMLSchema, document: etree._Element) -> list[str]:
    if schema.validate(etree.ElementTree(document)):
        return []
    return [mask_national_numbers(error.message) for error in schema.error_log][:5]


def load_register(path: Path = REGISTER) -> dict[str, dict[str, Any]]:
    persons = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("persons", [])
    register = {}
    for person in persons:
        niss = str(person["niss"])
        check_niss(niss)  # a fixture with a wrong NISS is a mistake of ours
        register[niss] = person
    return register


# -- answers --------------------------------------------------------------------------------


def soap_fault(code: str, reason: str, status: int = 500) -> Response:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV})
    fault = etree.SubElement(
        etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body"), f"{{{SOAP_ENV}}}Fault"
    )
    etree.SubElement(fault, "faultcode").text = f"soapenv:{code}"
    etree.SubElement(fault, "faultstring").text = reason
    return _xml_response(envelope, status)


def soap_reply(reply: bytes) -> Response:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV})
    body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
    etree.SubElement(
        body, f"{{{CONNECTOR_NS}}}xmlString", nsmap={"ws": CONNECTOR_NS}
    ).text = reply.decode("utf-8")
    return _xml_response(envelope, 200)


def _xml_response(envelope: etree._Element, status: int) -> Response:
    content = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return Response(content, status_code=status, media_type=XML_MEDIA_TYPE)


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def _summary(parent: etree._Element, ok: str, details: list[tuple[str, str, str]]) -> None:
    summary = _sub(parent, f"{_C}ResultSummary")
    summary.set("ok", ok)
    _sub(summary, f"{_C}ReturnCode", "0" if ok == "YES" else "1")
    for severity, code, diagnostic in details:
        detail = _sub(summary, f"{_C}Detail")
        _sub(detail, f"{_C}Severity", severity)
        _sub(detail, f"{_C}ReasonCode", code)
        _sub(detail, f"{_C}Diagnostic", diagnostic)
        _sub(detail, f"{_C}AuthorCodeList", "CBSS")


def verification_details(
    request: etree._Element, person: dict[str, Any] | None
) -> list[tuple[str, str, str]]:
    """The CBSS's verdict on ``VerificationData/PersonData``, as its reason codes say it."""
    data = request.find(f".//{_I}VerificationData/{_I}PersonData")
    if data is None or person is None:
        return []
    declared = {
        "last_name": data.findtext(f"{_I}LastName"),
        "first_name": data.findtext(f"{_I}FirstName"),
        "birth_date": data.findtext(f"{_I}BirthDate"),
    }
    matches = all(
        value is None or " ".join(value.split()).casefold() == str(person.get(name, "")).casefold()
        for name, value in declared.items()
    )
    if matches:
        return [
            (
                "INFORMATION",
                "12007001",
                "The identity of the person was successfully validated by the system.",
            )
        ]
    return [
        (
            "WARNING",
            "22007007",
            "The specified PersonData does not match with the data found for this person.",
        )
    ]


def identify_reply(request: etree._Element, person: dict[str, Any] | None, now: datetime) -> bytes:
    """An ``SSDNReply`` shaped like the CBSS's sample IdentifyPerson replies."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    root = etree.Element(f"{_S}SSDNReply", nsmap={None: SERVICE_NS, "common": COMMON_NS})
    context = _sub(root, f"{_S}ReplyContext")
    _summary(context, "YES", [])
    user = request.find(f"{_S}RequestContext/{_S}AuthorizedUser")
    if user is not None:
        context.append(etree.fromstring(etree.tostring(user)))
    message = _sub(context, f"{_S}Message")
    reference = request.findtext(f"{_S}RequestContext/{_S}Message/{_S}Reference")
    if reference:
        _sub(message, f"{_S}Reference", reference)
    alphabet = string.ascii_uppercase + string.digits
    _sub(message, f"{_S}Ticket", "".join(secrets.choice(alphabet) for _ in range(15)))
    sent = request.findtext(f"{_S}RequestContext/{_S}Message/{_S}TimeRequest")
    if sent:
        _sub(message, f"{_S}TimeRequest", sent)
    _sub(message, f"{_S}TimeReceive", stamp)
    _sub(message, f"{_S}TimeResponse", stamp)

    service = _sub(root, f"{_S}ServiceReply")
    details = verification_details(request, person)
    warned = any(severity == "WARNING" for severity, _, _ in details)
    _summary(service, "WARNING" if warned else "YES", details)
    _sub(service, f"{_S}ServiceId", SERVICE_ID)
    _sub(service, f"{_S}Version", "20050930")
    reply = _sub(service, f"{_I}IdentifyPersonReply")
    if person is not None:
        legal = _sub(_sub(reply, f"{_I}SearchResults"), f"{_I}LimitedLegalData")
        legal.set("origin", "RN_RR")
        _basic(_sub(legal, f"{_I}Basic"), person)
    content: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return content


def _basic(basic: etree._Element, person: dict[str, Any]) -> None:
    _sub(basic, f"{_I}SocialSecurityUser", str(person["niss"]))
    _sub(basic, f"{_I}LastName", person["last_name"])
    if person.get("first_name"):
        _sub(basic, f"{_I}FirstName", person["first_name"])
    if person.get("middle_name"):
        _sub(basic, f"{_I}MiddleName", person["middle_name"])
    _sub(basic, f"{_I}BirthDate", str(person["birth_date"]))
    _sub(basic, f"{_I}Gender", str(person.get("gender", 0)))
    if address := person.get("address"):
        element = _sub(basic, f"{_I}Address")
        _sub(element, f"{_I}CountryCode", BELGIUM)
        _sub(element, f"{_I}MunicipalityCode", str(address["municipality_code"]))
        _sub(element, f"{_I}Municipality", address["municipality"]).set("lang", "fr")
        _sub(element, f"{_I}PostalCode", str(address["postal_code"]))
        _sub(element, f"{_I}Street", address["street"]).set("lang", "fr")
        _sub(element, f"{_I}HouseNumber", str(address["house_number"]))
        if address.get("box"):
            _sub(element, f"{_I}Box", str(address["box"]))
    elif post := person.get("diplomatic_post"):
        element = _sub(basic, f"{_I}DiplomaticPost")
        _sub(element, f"{_I}CountryCode", str(post["country_code"]))
        _sub(element, f"{_I}Post", str(post["post"]))
        _sub(element, f"{_I}AddressPlainText", post["address"])


# -- reading the request ----------------------------------------------------------------------


def ssdn_request_of(envelope: bytes) -> etree._Element:
    try:
        root = etree.fromstring(envelope, parser=safe_parser())
    except etree.XMLSyntaxError as exc:
        raise ClientFault(f"the message is not well-formed XML: {exc}") from exc
    if root.getroottree().docinfo.doctype:
        raise ClientFault("a DOCTYPE is not allowed")
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise ClientFault(f"the message is not a SOAP 1.1 Envelope but {root.tag}")
    if len(root.findall(f"{{{SOAP_ENV}}}Body")) != 1:
        raise ClientFault("a SOAP Envelope has one Body")
    text = root.findtext(f"{{{SOAP_ENV}}}Body/{{{CONNECTOR_NS}}}xmlString")
    if not text:
        raise ClientFault("the Body holds no xmlString: this sandbox implements sendXML only")
    try:
        request = etree.fromstring(text.encode("utf-8"), parser=safe_parser())
    except etree.XMLSyntaxError as exc:
        raise ClientFault(f"xmlString is not a well-formed SSDN document: {exc}") from exc
    if request.getroottree().docinfo.doctype:
        raise ClientFault("a DOCTYPE is not allowed in the SSDN document")
    return request


def request_fingerprint(ssdn: etree._Element) -> str:
    """What a repeated key must repeat: who asks and whom about.

    The ``AuthorizedUser`` and the ``IdentifyPersonRequest`` (SSIN and
    verification data), canonicalised; the message's reference and time change
    from one attempt to the next and are left out.
    """
    parts = (
        ssdn.find(f"{_S}RequestContext/{_S}AuthorizedUser"),
        ssdn.find(f"{_S}ServiceRequest/{_I}IdentifyPersonRequest"),
    )
    digest = hashlib.sha256()
    for part in parts:
        digest.update(b"-" if part is None else etree.tostring(part, method="c14n"))
    return digest.hexdigest()


# -- the routes ---------------------------------------------------------------------------------


def router(
    recorder: Recorder, settings: HubSettings, register: dict[str, dict[str, Any]] | None = None
) -> APIRouter:
    contract_root = settings.corpus_dir / CONTRACT_ROOT
    schema: etree.XMLSchema | None = None
    missing = [path for path in SCHEMA_ROOTS if not (contract_root / path).is_file()]
    if missing:
        log.warning(
            "KSZ-BCSS sandbox: the SSDN schemas are missing under %s (HUB_CORPUS_DIR): every"
            " IdentifyPerson request is answered with a SOAP Fault until they are there",
            contract_root,
        )
    else:
        schema = load_ssdn_schema(contract_root)
    persons = load_register() if register is None else register
    api = APIRouter(prefix="/ksz-bcss", tags=["sandbox: KSZ-BCSS"])

    @api.post("/WebServiceConnector")
    async def send_xml(request: Request) -> Response:
        header_key = request.headers.get("Idempotency-Key")
        # Who connected, when through the TLS listener (``sandbox.tls``): the
        # institution the real service would have authenticated.
        certificate, tenant = client_tenant(request.scope)
        # One institution's key is not another's: scoped, they cannot collide (in the
        # attempts counted as in the receptions).
        key = f"{tenant}:{header_key}" if header_key and tenant else header_key
        if await recorder.inject_faults(SERVICE, key):
            return soap_fault("Server", "The sandbox was told to fail this request.", status=503)
        if schema is None:
            return soap_fault(
                "Server",
                f"The sandbox cannot check requests: the KSZ-BCSS schemas are missing under"
                f" {contract_root} (set HUB_CORPUS_DIR to the reference corpus).",
            )
        body = await request.body()
        try:
            if len(body) > MAX_ENVELOPE_BYTES:
                raise ClientFault(f"the message is larger than {MAX_ENVELOPE_BYTES} bytes")
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "text/xml":
                raise ClientFault(f"a SOAP 1.1 message is text/xml, not {media_type or 'untyped'}")
            ssdn = ssdn_request_of(body)
            problems = schema_problems(schema, ssdn)
            if problems:
                raise ClientFault(
                    "the SSDN request does not conform to the KSZ-BCSS XSDs: " + "; ".join(problems)
                )
            if ssdn.tag != f"{_S}SSDNRequest":
                raise ClientFault(f"the document is {ssdn.tag}, not an SSDNRequest")
            service_id = (ssdn.findtext(f"{_S}ServiceRequest/{_S}ServiceId") or "").strip()
            if service_id != SERVICE_ID:
                raise ClientFault(f"this sandbox implements {SERVICE_ID} only, not {service_id!r}")
            niss = ssdn.findtext(f".//{_I}IdentifyPersonRequest/{_I}SearchCriteria/{_I}SSIN")
            if not niss:
                raise ClientFault("this sandbox identifies by SSIN only (no phonetic search)")
        except ClientFault as exc:
            return soap_fault("Client", str(exc))
        fingerprint = request_fingerprint(ssdn)
        async with recorder.lock:
            first = recorder.first(SERVICE, key) if key else None
            if first is not None:
                if first.summary["fingerprint"] != fingerprint:
                    recorder.count_reuse(first)  # not an arrival of the first request
                    return soap_fault("Client", "Idempotency-Key reused for another request")
                recorder.count_repeat(first)
                return soap_reply(first.answer["reply"].encode("utf-8"))
            person = persons.get(niss.strip())
            reply = identify_reply(ssdn, person, datetime.now(UTC))
            if key:
                recorder.record(
                    SERVICE,
                    key,
                    tenant=tenant,
                    answer={"reply": reply.decode("utf-8")},
                    traceparent=request.headers.get("traceparent"),
                    summary={
                        "niss": mask_niss(niss.strip()),
                        "status": "found" if person else "not_found",
                        "client_certificate": certificate,
                        "fingerprint": fingerprint,
                    },
                )
        return soap_reply(reply)

    return api
