"""Simulated regional oversight service ("tutelle"), on the modelled contract.

The Region publishes no machine contract for it; the hub models one in
``contracts/oversight/tutelle.wsdl`` and ``tutelle.xsd`` (their first lines say
how). ``POST /oversight/soap/Tutelle`` takes SOAP 1.1 (``text/xml``); ``GET
?wsdl`` serves the WSDL with this endpoint as its address, ``?xsd=tutelle.xsd``
its schema. Each request is checked in this order, and the first problem is
the SOAP 1.1 Fault that answers (HTTP 500):

1. the faults the sandbox was told to inject (service ``oversight``) → 503
   ``soap:Server``;
2. the WS-Security signature, against the tenants' certificates, with the
   e-Box sandbox's trust store (``sandbox.ebox_soap.TrustStore``) →
   ``soap:Client`` saying why;
3. the request against the XSD, and ``CommuneNis`` against the signer: a
   commune transmits and reads its own acts only → ``soap:Client``.

``transmitDecision`` answers an acknowledgement number; the ``ItemId`` is the
idempotency key (per signing tenant): a repeated one gets the first number
and opens nothing new, when it comes with the same request (its element,
canonicalised); with another, it is refused with a ``soap:Client`` fault
rather than answered as the first and lost without a word. The oversight
decides ``outcome_delay_seconds`` later (a few seconds here; 30 days and more
in life), with the outcome the control surface set (``approved`` by default);
from then on ``listOutcomes`` lists it after its cursor, oldest first.

Control surface: ``PUT /_sandbox/oversight/behaviour`` sets the outcome, its
reason and the delay of the decisions to come; ``GET /_sandbox/oversight/outcomes``
shows what was decided.
"""

from __future__ import annotations

import asyncio
import itertools
import posixpath
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field

from gateway.wssecurity import SignatureError
from kernel.settings import REPOSITORY_ROOT, HubSettings
from sandbox.ebox_soap import (
    ClientFault,
    TrustStore,
    read_limited,
    request_fingerprint,
    reused_key_fault,
    schema_problem,
    soap_fault,
    ws_security_fault,
)
from sandbox.recorder import Recorder

SERVICE = "oversight"
PATH = "/oversight/soap/Tutelle"
CONTRACT_DIR = REPOSITORY_ROOT / "contracts" / "oversight"
WSDL = "tutelle.wsdl"
SCHEMA = "tutelle.xsd"
NS = "urn:hub:modelled:wallonie:tutelle:1"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
WSDL_SOAP11_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
TRANSMIT = f"{{{NS}}}TransmitDecisionRequest"
LIST_OUTCOMES = f"{{{NS}}}ListOutcomesRequest"
MAX_ENVELOPE_BYTES = 2 * 1024 * 1024
DEFAULT_OUTCOME_DELAY_SECONDS = 3.0
XML_MEDIA_TYPE = "text/xml; charset=utf-8"

OutcomeKind = Literal["approved", "annulled", "no_objection"]


class Behaviour(BaseModel):
    """How the simulated oversight decides the transmissions to come."""

    model_config = ConfigDict(extra="forbid")
    outcome: OutcomeKind = "approved"
    reason: str | None = Field(default=None, max_length=2000)
    delay_seconds: float = Field(default=DEFAULT_OUTCOME_DELAY_SECONDS, ge=0, le=3600)


@dataclass(frozen=True)
class DecidedOutcome:
    cursor: int
    tenant: str
    acknowledgement_number: str
    item_id: str
    decision_number: str
    outcome: OutcomeKind
    decided_on: date
    reason: str | None


def _numbering() -> itertools.count[int]:
    """Numbers that keep growing across restarts of the sandbox (from its start, in ms).

    The sandbox forgets everything when it stops; its clients do not (the gateway
    resumes listing after the last cursor it recorded and keys outcomes by their
    acknowledgement number), as they would not with the Region's service, whose
    cursors and numbers never go back. Counting from 1 again would hide every
    outcome after a restart of ``hub up``.
    """
    return itertools.count(int(time.time() * 1000) + 1)


@dataclass
class OversightOffice:
    """The transmissions the oversight received and what it decided, per commune."""

    behaviour: Behaviour = field(default_factory=Behaviour)
    outcomes: list[DecidedOutcome] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=lambda: _numbering())
    _positions: itertools.count[int] = field(default_factory=lambda: _numbering())
    _pending: set[asyncio.TimerHandle] = field(default_factory=set)

    def acknowledgement_number(self) -> str:
        return f"TUT-{datetime.now(UTC).year}-{next(self._numbers):06d}"

    def schedule(self, tenant: str, acknowledgement: str, item_id: str, decision: str) -> None:
        behaviour = self.behaviour
        handles: list[asyncio.TimerHandle] = []

        def decide() -> None:
            self._pending.difference_update(handles)
            # The cursor is given when the outcome exists, so "after cursor N" never skips one.
            self.outcomes.append(
                DecidedOutcome(
                    cursor=next(self._positions),
                    tenant=tenant,
                    acknowledgement_number=acknowledgement,
                    item_id=item_id,
                    decision_number=decision,
                    outcome=behaviour.outcome,
                    decided_on=datetime.now(UTC).date(),
                    reason=behaviour.reason,
                )
            )

        handles.append(asyncio.get_running_loop().call_later(behaviour.delay_seconds, decide))
        self._pending.update(handles)

    def after(self, tenant: str, cursor: int, limit: int) -> list[DecidedOutcome]:
        return [o for o in self.outcomes if o.tenant == tenant and o.cursor > cursor][:limit]

    def clear(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        self.outcomes.clear()
        self.behaviour = Behaviour()


# -- answers ------------------------------------------------------------------------------


def _answer(tag: str, children: list[etree._Element]) -> Response:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV})
    body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
    answer = etree.SubElement(body, f"{{{NS}}}{tag}", nsmap={"t": NS})
    answer.extend(children)
    content = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return Response(content, status_code=200, media_type=XML_MEDIA_TYPE)


def _element(name: str, text: str) -> etree._Element:
    element = etree.Element(f"{{{NS}}}{name}")
    element.text = text
    return element


def transmit_response(acknowledgement: str, received_at: datetime) -> Response:
    return _answer(
        "TransmitDecisionResponse",
        [
            _element("AcknowledgementNumber", acknowledgement),
            _element("ReceivedAt", received_at.isoformat(timespec="seconds")),
        ],
    )


def outcomes_response(outcomes: list[DecidedOutcome], since: int) -> Response:
    children = []
    for outcome in outcomes:
        entry = etree.Element(f"{{{NS}}}Outcome")
        entry.extend(
            [
                _element("Cursor", str(outcome.cursor)),
                _element("AcknowledgementNumber", outcome.acknowledgement_number),
                _element("ItemId", outcome.item_id),
                _element("DecisionNumber", outcome.decision_number),
                _element("Outcome", outcome.outcome),
                _element("DecidedOn", outcome.decided_on.isoformat()),
            ]
        )
        if outcome.reason:
            entry.append(_element("Reason", outcome.reason))
        children.append(entry)
    next_cursor = outcomes[-1].cursor if outcomes else since
    return _answer("ListOutcomesResponse", [*children, _element("NextCursor", str(next_cursor))])


def served_contract(name: str, endpoint: str) -> bytes:
    """The WSDL or XSD, its schema import pointing back here and its address at us."""
    document = etree.parse(str(CONTRACT_DIR / name), etree.XMLParser(no_network=True))
    for node in document.iter(f"{{{XSD_NS}}}import", f"{{{XSD_NS}}}include"):
        location = node.get("schemaLocation")
        if location:
            node.set("schemaLocation", "?xsd=" + posixpath.normpath(location))
    for address in document.iter(f"{{{WSDL_SOAP11_NS}}}address"):
        address.set("location", endpoint)
    content: bytes = etree.tostring(document, xml_declaration=True, encoding="UTF-8")
    return content


# -- the routes ---------------------------------------------------------------------------


def router(
    recorder: Recorder,
    settings: HubSettings,
    *,
    office: OversightOffice | None = None,
    outcome_delay_seconds: float = DEFAULT_OUTCOME_DELAY_SECONDS,
) -> APIRouter:
    office = office or OversightOffice(Behaviour(delay_seconds=outcome_delay_seconds))
    schema = etree.XMLSchema(
        etree.parse(str(CONTRACT_DIR / SCHEMA), etree.XMLParser(no_network=True))
    )
    trust = TrustStore(settings.keys_dir)
    api = APIRouter(tags=["sandbox: regional oversight (tutelle) SOAP"])

    @api.get(PATH)
    async def contract(
        request: Request, wsdl: str | None = None, xsd: str | None = None
    ) -> Response:
        """``?wsdl``: the modelled WSDL; ``?xsd=tutelle.xsd``: its schema."""
        endpoint = str(request.url.remove_query_params(["wsdl", "xsd"]))
        if wsdl is not None:
            return Response(served_contract(WSDL, endpoint), media_type=XML_MEDIA_TYPE)
        if xsd == SCHEMA:
            return Response(served_contract(SCHEMA, endpoint), media_type=XML_MEDIA_TYPE)
        return Response("Not found: ask for ?wsdl", status_code=404, media_type="text/plain")

    @api.post(PATH)
    async def endpoint(request: Request) -> Response:
        if await recorder.inject_faults(SERVICE, request.headers.get("Idempotency-Key")):
            return soap_fault("Server", "The sandbox was told to fail this request.", status=503)
        try:
            envelope = await read_limited(request, MAX_ENVELOPE_BYTES)
            try:
                # In a worker thread: canonicalising and hashing a body of megabytes
                # would hold every other request to the sandbox meanwhile.
                verified = await asyncio.to_thread(trust.verify, envelope)
            except SignatureError as exc:
                raise ws_security_fault(exc) from exc
            operation = [child for child in verified.body if isinstance(child.tag, str)]
            if len(operation) != 1 or operation[0].tag not in (TRANSMIT, LIST_OUTCOMES):
                raise ClientFault("this service implements transmitDecision and listOutcomes")
            request_element = operation[0]
            problem = schema_problem(schema, request_element)
            if problem:
                raise ClientFault(f"the request does not conform to the oversight XSD: {problem}")
            commune = request_element.findtext(f"{{{NS}}}CommuneNis") or ""
            if verified.tenant != commune:
                raise ClientFault(
                    f"CommuneNis {commune} is not the commune that signed ({verified.subject})"
                )
        except ClientFault as exc:
            return soap_fault(exc.code, str(exc))

        if request_element.tag == LIST_OUTCOMES:
            since = int(request_element.findtext(f"{{{NS}}}Since") or 0)
            limit = int(request_element.findtext(f"{{{NS}}}MaxCount") or 100)
            return outcomes_response(office.after(commune, since, limit), since)

        item_id = request_element.findtext(f"{{{NS}}}ItemId") or ""
        decision_number = request_element.findtext(f"{{{NS}}}DecisionNumber") or ""
        fingerprint = request_fingerprint(request_element)
        async with recorder.lock:
            first = recorder.first(SERVICE, f"{commune}:{item_id}")
            if first is not None:
                if first.summary.get("fingerprint") != fingerprint:
                    recorder.count_reuse(first)  # not an arrival of the first transmission
                    return reused_key_fault("ItemId", item_id)
                recorder.count_repeat(first)
                return transmit_response(
                    first.answer["acknowledgement_number"],
                    datetime.fromisoformat(first.answer["received_at"]),
                )
            received_at = datetime.now(UTC)
            answer = {
                "acknowledgement_number": office.acknowledgement_number(),
                "received_at": received_at.isoformat(),
            }
            recorder.record(
                SERVICE,
                f"{commune}:{item_id}",
                tenant=commune,
                answer=answer,
                traceparent=request.headers.get("traceparent"),
                summary={
                    "item_id": item_id,
                    "decision_number": decision_number,
                    "category": request_element.findtext(f"{{{NS}}}Category"),
                    "annexes": len(request_element.findall(f"{{{NS}}}Annex")),
                    "idempotency_key_header": request.headers.get("Idempotency-Key"),
                    "signed_by": verified.subject,
                    "fingerprint": fingerprint,
                },
            )
            office.schedule(commune, answer["acknowledgement_number"], item_id, decision_number)
        return transmit_response(answer["acknowledgement_number"], received_at)

    @api.put("/_sandbox/oversight/behaviour", tags=["sandbox control"])
    async def set_behaviour(behaviour: Behaviour) -> Behaviour:
        """The outcome, reason and delay of the oversight's decisions on what comes next."""
        office.behaviour = behaviour
        return behaviour

    @api.get("/_sandbox/oversight/outcomes", tags=["sandbox control"])
    async def outcomes(tenant: str | None = None) -> dict[str, Any]:
        items = [
            {
                "cursor": o.cursor,
                "tenant": o.tenant,
                "acknowledgement_number": o.acknowledgement_number,
                "item_id": o.item_id,
                "decision_number": o.decision_number,
                "outcome": o.outcome,
                "decided_on": o.decided_on.isoformat(),
                "reason": o.reason,
            }
            for o in office.outcomes
            if tenant in (None, o.tenant)
        ]
        return {"count": len(items), "behaviour": office.behaviour.model_dump(), "items": items}

    return api
