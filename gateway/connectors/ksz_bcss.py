# zeep ships py.typed but leaves most functions unannotated; calling them is intended here.
"""Connector to the KSZ-BCSS (Crossroads Bank for Social Security): ``IdentifyPerson``.

One ``urban.applicant.identification_requested.v1`` event becomes one SSDN
request to the CBSS ``WebServiceConnector`` (``sendXML``), and the person the
National Register holds for that NISS comes back as the receipt's ``answer``:

    status        "found" or "not_found"
    last_name, first_names, birth_date (yyyy-mm-dd, perhaps yyyy-mm-00),
    gender ("male", "female", "unknown"), address (one line)
    verification  "matched" / "mismatch" when the declared name and birth date
                  were sent for verification (the CBSS says whether they match),
                  None otherwise

The contracts are the corpus's (``HubSettings.corpus_dir``, never copied):
``contracts/ksz-bcss/WSDL/WebServiceConnector.wsdl`` and the SSDN XSDs.

Why zeep *and* lxml: the WSDL types its one part as a plain ``xsd:string``
(``xmlString``) that carries the SSDN document as text, so zeep builds and
reads the SOAP envelope (and its faults, mapped by
``gateway.errors.translate_transport_errors`` as for every SOAP connector)
while lxml builds the ``SSDNRequest`` inside it and reads the ``SSDNReply``,
which zeep cannot type. The request is built after the XSDs
(``SSDN/Service/SSDNRequest.xsd`` and ``OCMW_CPAS/IdentifyPerson``); the unit
tests validate it against them.

The WSDL carries no WS-Security policy: the real CBSS authenticates the
institution on the connection, by its client certificate (mutual TLS). An
``https`` endpoint gets a client of its own that shows the tenant's key and
certificate (``key_file`` and ``cert_file``, from the federal PKI; in
development the tenant's identity of ``kernel.pki``, which the sandbox's TLS
listener trusts) and trusts, besides the usual authorities, ``ca_file`` and, in
development, the sandbox's certificate. Production refuses a plain ``http``
endpoint: no certificate could be shown there.

National numbers are personal data: they travel in the request and the
answer, never in a log line, an error reason or a span attribute.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from lxml import etree
from pydantic import Field
from zeep import AsyncClient
from zeep import Settings as ZeepSettings
from zeep.wsdl.bindings.soap import SoapBinding

from contracts.envelope import EnvelopeError
from contracts.events.urban import IdentificationRequested
from gateway.connectors.base import (
    ConnectorContext,
    Delivery,
    DeliveryResult,
    TargetUrl,
    attempt_seconds_for,
    register_connector,
    settings_of,
)
from gateway.connectors.soap import (
    XML_CONTENT_TYPE,
    SharedPoolTransport,
    SigningSettings,
    TenantCertificate,
    serialise,
    signing_files,
)
from gateway.errors import (
    PermanentDeliveryError,
    RetryableDeliveryError,
    translate_transport_errors,
)
from gateway.http import client_certificate_tls, outbound_client
from kernel.logs import mask_national_numbers
from kernel.pki import sandbox_tls_files
from kernel.xml_parsing import parse_untrusted

TYPE_NAME = "ksz_identify"
TARGET = "KSZ-BCSS"
#: The contract's WSDL, under ``HubSettings.corpus_dir``.
DEFAULT_WSDL = Path("contracts/ksz-bcss/WSDL/WebServiceConnector.wsdl")
CONNECTOR_NS = "http://ksz-bcss.fgov.be/connectors/WebServiceConnector"
BINDING = f"{{{CONNECTOR_NS}}}KSZBCSSWebServiceConnectorBinding"
OPERATION = "sendXML"
SERVICE_NS = "http://www.ksz-bcss.fgov.be/XSD/SSDN/Service"
COMMON_NS = "http://www.ksz-bcss.fgov.be/XSD/SSDN/Common"
IDENTIFY_NS = "http://www.ksz-bcss.fgov.be/XSD/SSDN/OCMW_CPAS/IdentifyPerson"
SERVICE_ID = "OCMWCPASIdentifyPerson"
SERVICE_VERSION = "20050930"
#: CBSS reason codes of an identity verification (the CBSS's own, as in its sample replies).
PERSON_DATA_MISMATCH = "22007007"
IDENTITY_VALIDATED = "12007001"
GENDERS = {"0": "unknown", "1": "male", "2": "female"}

_S = f"{{{SERVICE_NS}}}"
_C = f"{{{COMMON_NS}}}"
_I = f"{{{IDENTIFY_NS}}}"


class KszBcssSettings(SigningSettings):
    """``key_file`` and ``cert_file`` (``SigningSettings``): the institution's TLS client
    identity, for an ``https`` endpoint."""

    type: Literal["ksz_identify"]
    endpoint: TargetUrl
    #: More certificates to trust for the CBSS's server (PEM), besides the usual authorities.
    ca_file: Path | None = None
    #: Defaults to the corpus WSDL; loaded once, when the connector is built.
    wsdl: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    #: The institution as the CBSS registered it (``AuthorizedUser``): the program id
    #: it was given (11 digits, SSIN-shaped), a contact address, its enterprise number,
    #: and its sector (MatrixID 17 is the CPAS/OCMW sector) and sub-sector.
    user_id: str = Field(pattern=r"^[0-9]{11}$")
    email: str = Field(pattern=r"^.+@.+$", max_length=100)
    org_unit: str | None = Field(default=None, pattern=r"^[0-9]{10}$")
    matrix_id: int = Field(default=17, ge=0)
    matrix_sub_id: int | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class Identification:
    """What the connector asks: a NISS, and what was declared to verify it against."""

    niss: str
    last_name: str
    first_name: str | None = None
    birth_date: date | None = None


def ssdn_request(
    settings: KszBcssSettings, who: Identification, reference: str, now: datetime
) -> bytes:
    """The ``SSDNRequest`` of one ``IdentifyPerson``, as the SSDN XSDs define it.

    The declared name and birth date are sent as ``VerificationData/PersonData``
    when the birth date is known (the XSD requires one there).
    """
    root = etree.Element(f"{_S}SSDNRequest", nsmap={None: SERVICE_NS})
    context = etree.SubElement(root, f"{_S}RequestContext")
    user = etree.SubElement(context, f"{_S}AuthorizedUser")
    etree.SubElement(user, f"{_S}UserID").text = settings.user_id
    etree.SubElement(user, f"{_S}Email").text = settings.email
    if settings.org_unit:
        etree.SubElement(user, f"{_S}OrgUnit").text = settings.org_unit
    etree.SubElement(user, f"{_S}MatrixID").text = str(settings.matrix_id)
    if settings.matrix_sub_id is not None:
        etree.SubElement(user, f"{_S}MatrixSubID").text = str(settings.matrix_sub_id)
    message = etree.SubElement(context, f"{_S}Message")
    etree.SubElement(message, f"{_S}Reference").text = reference
    etree.SubElement(message, f"{_S}TimeRequest").text = now.astimezone(UTC).strftime(
        "%Y%m%dT%H%M%S"
    )
    service = etree.SubElement(root, f"{_S}ServiceRequest")
    etree.SubElement(service, f"{_S}ServiceId").text = SERVICE_ID
    etree.SubElement(service, f"{_S}Version").text = SERVICE_VERSION
    identify = etree.SubElement(service, f"{_I}IdentifyPersonRequest", nsmap={"ipr": IDENTIFY_NS})
    criteria = etree.SubElement(identify, f"{_I}SearchCriteria")
    etree.SubElement(criteria, f"{_I}SSIN").text = who.niss
    if who.birth_date is not None:
        person = etree.SubElement(
            etree.SubElement(identify, f"{_I}VerificationData"), f"{_I}PersonData"
        )
        etree.SubElement(person, f"{_I}LastName").text = who.last_name
        if who.first_name:
            etree.SubElement(person, f"{_I}FirstName").text = who.first_name
        etree.SubElement(person, f"{_I}BirthDate").text = who.birth_date.isoformat()
    request: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return request


@dataclass(frozen=True)
class IdentifyReply:
    ticket: str | None
    answer: dict[str, str | None]


class ReplyError(ValueError):
    """The reply is not an SSDNReply the hub can read, or the CBSS refused the request."""


def read_reply(content: bytes | str) -> IdentifyReply:
    """The registered identity in an ``SSDNReply`` to ``IdentifyPerson``.

    Raises ReplyError when the reply is unreadable or says the request failed
    (``ok="NO"``), with the CBSS's diagnostics (national numbers masked).
    """
    try:
        root = parse_untrusted(content.encode() if isinstance(content, str) else content)
    except etree.XMLSyntaxError as exc:
        raise ReplyError(f"the reply is not well-formed XML ({exc})") from exc
    if root.tag != f"{_S}SSDNReply":
        raise ReplyError(f"the reply is {root.tag}, not an SSDNReply")
    ticket = root.findtext(f"{_S}ReplyContext/{_S}Message/{_S}Ticket")
    service = next(
        (
            reply
            for reply in root.findall(f"{_S}ServiceReply")
            if (reply.findtext(f"{_S}ServiceId") or "").strip() == SERVICE_ID
        ),
        None,
    )
    if service is None or _ok(service) == "NO":
        failed = service if service is not None else root.find(f"{_S}ReplyContext")
        raise ReplyError(
            "the CBSS refused the request: " + (_diagnostics(failed) or "no diagnostic given")
        )
    answer: dict[str, str | None] = {
        "status": "not_found",
        "last_name": None,
        "first_names": None,
        "birth_date": None,
        "gender": None,
        "address": None,
        "verification": _verification(service),
    }
    basic = service.find(
        f"{_I}IdentifyPersonReply/{_I}SearchResults/{_I}LimitedLegalData/{_I}Basic"
    )
    if basic is not None:
        names = [basic.findtext(f"{_I}FirstName"), basic.findtext(f"{_I}MiddleName")]
        gender = (basic.findtext(f"{_I}Gender") or "").strip()
        answer |= {
            "status": "found",
            "last_name": _text(basic.findtext(f"{_I}LastName")),
            "first_names": " ".join(n.strip() for n in names if n and n.strip()) or None,
            "birth_date": _text(basic.findtext(f"{_I}BirthDate")),
            "gender": GENDERS.get(gender) if gender else None,
            "address": _address(basic),
        }
    return IdentifyReply(ticket=_text(ticket), answer=answer)


def _text(value: str | None) -> str | None:
    return " ".join(value.split()) if value and value.strip() else None


def _ok(element: etree._Element) -> str:
    summary = element.find(f"{_C}ResultSummary")
    return "" if summary is None else str(summary.get("ok", ""))


def _details(element: etree._Element | None) -> list[etree._Element]:
    if element is None:
        return []
    return list(element.iterfind(f"{_C}ResultSummary/{_C}Detail"))


def _diagnostics(element: etree._Element | None) -> str:
    said = [
        f"{detail.findtext(f'{_C}ReasonCode') or '?'} "
        f"{_text(detail.findtext(f'{_C}Diagnostic')) or ''}".strip()
        for detail in _details(element)
    ]
    return mask_national_numbers("; ".join(said))


def _verification(service: etree._Element) -> str | None:
    codes = {(d.findtext(f"{_C}ReasonCode") or "").strip() for d in _details(service)}
    if PERSON_DATA_MISMATCH in codes:
        return "mismatch"
    if IDENTITY_VALIDATED in codes:
        return "matched"
    return None


def _address(basic: etree._Element) -> str | None:
    address = basic.find(f"{_I}Address")
    if address is not None:
        street = _text(address.findtext(f"{_I}Street"))
        number = _text(address.findtext(f"{_I}HouseNumber"))
        box = _text(address.findtext(f"{_I}Box"))
        line = " ".join(p for p in (street, number, f"bte {box}" if box else None) if p)
        town = " ".join(
            p
            for p in (
                _text(address.findtext(f"{_I}PostalCode")),
                _text(address.findtext(f"{_I}Municipality")),
            )
            if p
        )
        return ", ".join(p for p in (line, town) if p) or None
    post = basic.find(f"{_I}DiplomaticPost")
    if post is not None:
        return _text(post.findtext(f"{_I}AddressPlainText"))
    return None


def reference_for(idempotency_key: str) -> str:
    """The request's ``Message/Reference``: stable for one delivery, and says nothing personal."""
    return "hub-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


class KszBcssConnector:
    type_name = TYPE_NAME

    def __init__(self, ctx: ConnectorContext, settings: KszBcssSettings) -> None:
        self.settings = settings
        self.attempt_seconds = attempt_seconds_for(settings.timeout_seconds)
        #: The client that shows the tenant's certificate, and that certificate, when the
        #: endpoint is https.
        self._own_http, self.certificate = _mutual_tls_client(ctx, settings)
        self._transport = SharedPoolTransport(self._own_http or ctx.http, settings.timeout_seconds)
        self._subject = self.certificate.subject if self.certificate else None
        self._client = AsyncClient(
            str(settings.wsdl or ctx.hub.corpus_dir / DEFAULT_WSDL),
            transport=self._transport,
            settings=ZeepSettings(forbid_dtd=True, forbid_entities=True, forbid_external=True),
        )
        self._service = self._client.create_service(BINDING, settings.endpoint)
        binding = self._client.wsdl.bindings[BINDING]
        if not isinstance(binding, SoapBinding):
            raise ValueError(f"{BINDING} of the KSZ-BCSS WSDL is not a SOAP binding")
        self._binding = binding
        self._operation = self._binding.get(OPERATION)

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        try:
            asked: IdentificationRequested = delivery.event.data_as(IdentificationRequested)
        except EnvelopeError as exc:
            raise PermanentDeliveryError(
                f"{TARGET} delivers {IdentificationRequested.TYPE} only, not {delivery.event.type}"
            ) from exc
        who = Identification(
            niss=asked.niss,
            last_name=asked.declared_last_name,
            first_name=asked.declared_first_name,
            birth_date=asked.declared_birth_date,
        )
        request = ssdn_request(
            self.settings, who, reference_for(delivery.idempotency_key), datetime.now(UTC)
        )
        headers = {
            **delivery.trace_headers,
            "Content-Type": XML_CONTENT_TYPE,
            "SOAPAction": f'"{self._operation.soapaction or ""}"',
            "Idempotency-Key": delivery.idempotency_key,
        }
        try:
            with translate_transport_errors(TARGET):
                envelope = self._client.create_message(self._service, OPERATION, request.decode())
                response = await self._transport.post(
                    self.settings.endpoint, serialise(envelope), headers
                )
                reply: Any = self._binding.process_reply(
                    self._client,
                    self._operation,
                    self._transport.new_response(response),  # type: ignore[no-untyped-call]
                )
        except RetryableDeliveryError as exc:
            raise self._naming_the_certificate(exc) from exc.__cause__
        if not isinstance(reply, str) or not reply.strip():
            raise PermanentDeliveryError(f"{TARGET} answered without an SSDN reply")
        try:
            identified = read_reply(reply)
        except ReplyError as exc:
            raise PermanentDeliveryError(f"{TARGET} IdentifyPerson: {exc}") from exc
        return DeliveryResult(
            external_reference=identified.ticket or reference_for(delivery.idempotency_key),
            answer=identified.answer,
        )

    def _naming_the_certificate(self, error: RetryableDeliveryError) -> RetryableDeliveryError:
        """A connection cut once open, under mutual TLS: a server that does not know the
        certificate shown cuts it so, after the handshake, with no other word. (Refused,
        unknown host, a server certificate not trusted: ``ConnectError``, said as it is.)"""
        cause = error.__cause__
        if self._subject is None or not isinstance(
            cause, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError
        ):
            return error
        return RetryableDeliveryError(
            f"{error} (the client certificate shown: {self._subject}; a CBSS that does not"
            " know it may close the connection so)"
        )

    async def aclose(self) -> None:
        await self._transport.aclose()
        if self._own_http is not None:
            await self._own_http.aclose()


#: Connections of a tenant's own client to the CBSS: twice a target's slots, as the shared
#: pool gives one host (``gateway.main``).
MUTUAL_TLS_CONNECTIONS = 16


def _mutual_tls_client(
    ctx: ConnectorContext, settings: KszBcssSettings
) -> tuple[httpx.AsyncClient | None, TenantCertificate | None]:
    """The tenant's own client for an https endpoint, and the certificate it shows; none for
    http, which production refuses."""
    if not settings.endpoint.lower().startswith("https://"):
        if ctx.hub.environment == "production":
            raise ValueError(
                f"tenant {ctx.tenant}: the {TYPE_NAME} endpoint must be https: the CBSS knows"
                " the institution by its TLS client certificate"
            )
        return None, None
    identity = signing_files(ctx, settings, TYPE_NAME)
    trusted = [settings.ca_file] if settings.ca_file else []
    sandbox_certificate = sandbox_tls_files(ctx.hub.keys_dir)[1]
    if ctx.hub.environment == "development" and sandbox_certificate.is_file():
        trusted.append(sandbox_certificate)
    tls = client_certificate_tls(
        identity.key_file, identity.cert_file, trusted, password=identity.key_password
    )
    client = outbound_client(MUTUAL_TLS_CONNECTIONS, per_host=MUTUAL_TLS_CONNECTIONS, tls=tls)
    return client, identity.certificate


def create_connector(context: ConnectorContext, config: dict[str, Any]) -> KszBcssConnector:
    return KszBcssConnector(context, settings_of(KszBcssSettings, context, config))


register_connector(TYPE_NAME, create_connector, event_types=[IdentificationRequested.TYPE])
