"""Simulated Peppol access point (AP) of the hub's communes: their inbox and their outbox.

It implements the modelled contract ``contracts/peppol-ap/openapi.yaml`` (no
Belgian AP publishes a common receiver API; the contract says how it was
modelled):

- ``/peppol-ap/v1/inbox``: the received business documents of an account,
  listed while ``new``, fetched with their content, acknowledged (processed)
  or rejected at transport level with an MLS-like reason code;
- ``/peppol-ap/v1/outbox``: the commune's answers. Only a well-formed BIS
  Invoice Response 3.0 (UBL ApplicationResponse) is accepted; anything else
  is refused with a Problem JSON listing every reason. It is sent for a
  participant of the account only (422 ``sender-not-served`` otherwise).

A participant id may carry the Peppol policy's scheme
(``iso6523-actorid-upis::``, as the contract allows): it is read without it.

**Sandbox credentials**: ``X-Api-Key: sandbox-ap-key-<account>`` for any
account name (the committed tenant files use account ``hub``). An account's
participants are those registered under it (account ``hub``: the communes of the
hub's tenant files) and the receivers of the documents dropped into its
inbox.

Control surface ``/_sandbox/peppol/inbox``: ``POST`` drops a document into an
account's inbox as if a supplier's AP had delivered it (tests, ``hub demo``);
``GET`` shows the inbox (with each message's state) and what the communes
answered, with the status codes per invoice. Outbox requests are recorded
under their ``Idempotency-Key`` by the sandbox's recorder (service
``peppol_ap``), which also injects the faults set for ``peppol_ap``.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import logging
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pybase64
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kernel.errors import problem_response
from kernel.settings import REPOSITORY_ROOT
from kernel.tenants import TenantConfigError, load_tenants
from kernel.xml_parsing import safe_parser
from sandbox.openapi_contract import OpenApiContract, contract_errors
from sandbox.recorder import Recorder

log = logging.getLogger(__name__)

SERVICE = "peppol_ap"
CONTRACT = REPOSITORY_ROOT / "contracts" / "peppol-ap" / "openapi.yaml"
PREFIX = "/peppol-ap/v1"
DEFAULT_ACCOUNT = "hub"
API_KEY_PREFIX = "sandbox-ap-key-"
_ACCOUNT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: The Peppol policy's identifier scheme, which the contract's ParticipantId allows in front.
PARTICIPANT_SCHEME = "iso6523-actorid-upis::"


def registered_participants(tenants_dir: Path) -> dict[str, set[str]]:
    """The participants registered under an account before any document reached it (a real
    AP knows them from its SMP registrations): account ``hub`` serves the communes of the
    hub's tenant files (``HUB_TENANTS_DIR``), so that their Invoice Responses go out without
    an invoice dropped first. An inbox drop registers its receiver too."""
    try:
        tenants = load_tenants(tenants_dir)
    except TenantConfigError as exc:  # the services refuse to start; the sandbox serves on
        log.warning("the Peppol sandbox registers no participant: %s", exc)
        return {}
    participants = {
        str(peppol["participant"]).lower()
        for tenant in tenants.values()
        if isinstance(peppol := tenant.raw.get("peppol"), dict) and peppol.get("participant")
    }
    return {DEFAULT_ACCOUNT: participants}


INVOICE_DOCUMENT_TYPE = (
    "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice##"
    "urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0::2.1"
)
BILLING_PROCESS = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0"

APPLICATION_RESPONSE = "{urn:oasis:names:specification:ubl:schema:xsd:ApplicationResponse-2}"
CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
CAC = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
NS = {"cbc": CBC, "cac": CAC}
INVOICE_RESPONSE_CUSTOMIZATION = "urn:fdc:peppol.eu:poacc:trns:invoice_response:3"
RESPONSE_CODES = ("AB", "IP", "UQ", "RE", "AP", "PD")


# -- the inbox --------------------------------------------------------------------------


@dataclass
class InboxMessage:
    message_id: str
    account: str
    sender: str
    receiver: str
    document_type: str
    process: str
    received_at: datetime
    document: bytes
    status: str = "new"  # new | acknowledged | rejected
    reason_code: str | None = None
    reason: str | None = None
    fetches: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "sender": self.sender,
            "receiver": self.receiver,
            "documentTypeId": self.document_type,
            "processId": self.process,
            "receivedAt": self.received_at.isoformat(timespec="seconds"),
            "size": len(self.document),
        }

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"messageId": self.message_id, "status": self.status}
        if self.reason_code:
            state |= {"reasonCode": self.reason_code, "reason": self.reason}
        return state


def without_scheme(participant: str) -> str:
    """``participant`` without the Peppol policy's identifier scheme the contract allows in
    front of it (``iso6523-actorid-upis::``, in any case), as documents and drops name it."""
    if participant[: len(PARTICIPANT_SCHEME)].lower() == PARTICIPANT_SCHEME:
        return participant[len(PARTICIPANT_SCHEME) :]
    return participant


@dataclass
class AccessPoint:
    messages: dict[str, InboxMessage] = field(default_factory=dict)
    #: account → the participants registered under it (lower case: Peppol participant ids
    #: are compared case-insensitively): ``registered_participants``, and every inbox
    #: drop's receiver.
    participants: dict[str, set[str]] = field(default_factory=dict)

    def serves(self, account: str, participant: str) -> bool:
        """Whether ``account`` may send as ``participant`` (without the scheme)."""
        return participant.lower() in self.participants.get(account, set())

    def deliver(self, drop: InboxDrop) -> InboxMessage:
        # A document reached the account for its receiver: the receiver is registered there.
        self.participants.setdefault(drop.account, set()).add(drop.receiver.lower())
        message = InboxMessage(
            message_id=str(uuid.uuid4()),
            account=drop.account,
            sender=drop.sender,
            receiver=drop.receiver,
            document_type=drop.document_type,
            process=drop.process,
            received_at=datetime.now(UTC),
            document=drop.content(),
        )
        self.messages[message.message_id] = message
        return message

    def of_account(self, account: str, message_id: str) -> InboxMessage | None:
        message = self.messages.get(message_id)
        return message if message is not None and message.account == account else None


class InboxDrop(BaseModel):
    """A document a supplier's access point delivered (control endpoint)."""

    model_config = ConfigDict(extra="forbid")
    account: str = Field(default=DEFAULT_ACCOUNT, pattern=_ACCOUNT.pattern)
    sender: str = Field(pattern=r"^[0-9]{4}:[^\s:]{1,200}$")
    receiver: str = Field(pattern=r"^[0-9]{4}:[^\s:]{1,200}$")
    document_type: str = INVOICE_DOCUMENT_TYPE
    process: str = BILLING_PROCESS
    #: The document as text (an XML invoice), or ``document_base64`` for any bytes.
    document: str | None = None
    document_base64: str | None = None

    @field_validator("document_base64")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                pybase64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise ValueError("not valid base64") from exc
        return value

    def content(self) -> bytes:
        if self.document_base64 is not None:
            return pybase64.b64decode(self.document_base64, validate=True)
        return (self.document or "").encode("utf-8")


# -- the outbox -------------------------------------------------------------------------


class InvalidDocument(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class InvoiceResponse:
    invoice_number: str
    response_code: str
    sender: str
    receiver: str


def read_invoice_response(content: bytes, sender: str, receiver: str) -> InvoiceResponse:
    """The BIS Invoice Response 3.0 in ``content``, or InvalidDocument with every reason."""
    try:
        root = etree.fromstring(content, parser=safe_parser())
    except etree.XMLSyntaxError as exc:
        raise InvalidDocument([f"document: not well-formed XML ({exc})"]) from exc
    if root.getroottree().docinfo.doctype:
        raise InvalidDocument(["document: a DOCTYPE is not allowed in a Peppol document"])
    if root.tag != f"{APPLICATION_RESPONSE}ApplicationResponse":
        raise InvalidDocument(
            [f"document: the root element is {root.tag}, not a UBL ApplicationResponse"]
        )
    problems: list[str] = []

    def text(path: str) -> str:
        return str(root.findtext(path, default="", namespaces=NS)).strip()

    customization = text("cbc:CustomizationID")
    if customization != INVOICE_RESPONSE_CUSTOMIZATION:
        problems.append(
            f"cbc:CustomizationID: {customization!r} is not {INVOICE_RESPONSE_CUSTOMIZATION!r}"
        )
    code = text("cac:DocumentResponse/cac:Response/cbc:ResponseCode")
    if code not in RESPONSE_CODES:
        problems.append(
            f"cac:DocumentResponse/cac:Response/cbc:ResponseCode: {code!r} is not one of "
            + ", ".join(RESPONSE_CODES)
        )
    invoice = text("cac:DocumentResponse/cac:DocumentReference/cbc:ID")
    if not invoice:
        problems.append("cac:DocumentResponse/cac:DocumentReference/cbc:ID: the invoice answered")
    for party, expected in (("SenderParty", sender), ("ReceiverParty", receiver)):
        endpoint = root.find(f"cac:{party}/cbc:EndpointID", namespaces=NS)
        found = (
            f"{endpoint.get('schemeID', '')}:{(endpoint.text or '').strip()}"
            if endpoint is not None
            else None
        )
        if found is None or found.lower() != expected.lower():
            problems.append(
                f"cac:{party}/cbc:EndpointID: {found!r} is not the request's {expected!r}"
            )
    if problems:
        raise InvalidDocument(problems)
    return InvoiceResponse(invoice, code, sender, receiver)


# -- answers ----------------------------------------------------------------------------


def problem(status: int, slug: str, title: str, detail: str, **extensions: Any) -> JSONResponse:
    return problem_response(status, slug, title, detail, **extensions)


def unauthorized() -> JSONResponse:
    return problem(
        401,
        "unauthorized",
        "Missing or unknown API key",
        "Send the account's key as X-Api-Key (sandbox: sandbox-ap-key-<account>).",
    )


def unavailable() -> JSONResponse:
    return problem(
        503, "unavailable", "Access point unavailable", "The sandbox was told to fail this request."
    )


def account_of(request: Request) -> str | None:
    key = request.headers.get("X-Api-Key", "")
    account = key.removeprefix(API_KEY_PREFIX)
    if not key.startswith(API_KEY_PREFIX) or not _ACCOUNT.fullmatch(account):
        return None
    # Constant time, as a real key check would be.
    return account if secrets.compare_digest(key, API_KEY_PREFIX + account) else None


# -- the routes -------------------------------------------------------------------------


def router(recorder: Recorder, access_point: AccessPoint | None = None) -> APIRouter:
    access_point = access_point or AccessPoint()
    contract = OpenApiContract(CONTRACT)
    outgoing = contract.validator("OutgoingDocument")
    rejection = contract.validator("Rejection")
    api = APIRouter(prefix=PREFIX, tags=["sandbox: Peppol access point"])

    async def guard(request: Request) -> str | JSONResponse:
        """The caller's account, or the answer that refuses the request."""
        if await recorder.inject_faults(SERVICE, request.headers.get("Idempotency-Key")):
            return unavailable()
        return account_of(request) or unauthorized()

    def not_found(message_id: str) -> JSONResponse:
        return problem(
            404, "not-found", "Message not found", f"No message {message_id!r} in this inbox."
        )

    @api.get("/inbox")
    async def list_inbox(
        request: Request, limit: int = 100, receiver: str | None = None
    ) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        # The contract's ParticipantId may carry the policy's scheme; drops never do.
        wanted = None if receiver is None else without_scheme(receiver).lower()
        new = [
            m
            for m in access_point.messages.values()
            if m.account == account
            and m.status == "new"
            and (wanted is None or m.receiver.lower() == wanted)
        ]
        return JSONResponse({"items": [m.summary() for m in new[: max(1, min(limit, 500))]]})

    @api.get("/inbox/{message_id}")
    async def get_message(request: Request, message_id: str) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        message = access_point.of_account(account, message_id)
        if message is None:
            return not_found(message_id)
        message.fetches += 1
        body = message.summary() | {
            "status": message.status,
            "document": pybase64.b64encode(message.document).decode(),
        }
        return JSONResponse(body)

    @api.post("/inbox/{message_id}/acknowledge")
    async def acknowledge(request: Request, message_id: str) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        message = access_point.of_account(account, message_id)
        if message is None:
            return not_found(message_id)
        if message.status == "rejected":
            return problem(
                409, "already-rejected", "Already rejected", f"Message {message_id} was rejected."
            )
        message.status = "acknowledged"
        return JSONResponse(message.state())

    @api.post("/inbox/{message_id}/reject")
    async def reject(request: Request, message_id: str) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        message = access_point.of_account(account, message_id)
        if message is None:
            return not_found(message_id)
        body = await _json_body(request)
        problems = ["body: not JSON"] if body is None else contract_errors(rejection, body)
        if problems:
            return _invalid(problems)
        assert isinstance(body, dict)
        if message.status == "acknowledged":
            return problem(
                409,
                "already-acknowledged",
                "Already acknowledged",
                f"Message {message_id} was acknowledged.",
            )
        message.status = "rejected"
        message.reason_code, message.reason = body["reasonCode"], body["reason"]
        return JSONResponse(message.state())

    @api.post("/outbox", status_code=202)
    async def send(request: Request) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        body = await _json_body(request)
        problems = ["body: not JSON"] if body is None else contract_errors(outgoing, body)
        if problems:
            return _invalid(problems)
        assert isinstance(body, dict)
        # The parties as the document's EndpointIDs name them: without the policy's scheme.
        sender, receiver = without_scheme(body["sender"]), without_scheme(body["receiver"])
        if not access_point.serves(account, sender):
            # An account sends for its own participants only: a gateway that mixed up its
            # tenants' access point accounts would otherwise speak for another commune.
            return _invalid(
                [f"sender: {sender!r} is not a participant of this access point account"],
                slug="sender-not-served",
            )
        try:
            content = pybase64.b64decode(body["document"], validate=True)
            response = read_invoice_response(content, sender, receiver)
        except binascii.Error:
            return _invalid(["document: not valid base64"])
        except InvalidDocument as exc:
            return _invalid(exc.problems)
        key = request.headers.get("Idempotency-Key") or f"no-key-{uuid.uuid4()}"
        fingerprint = hashlib.sha256(content).hexdigest()
        async with recorder.lock:
            first = recorder.first(SERVICE, key)
            if first is not None:
                if (first.tenant, first.summary.get("fingerprint")) != (account, fingerprint):
                    recorder.count_reuse(first)  # not an arrival of the first document
                    return _invalid(
                        ["Idempotency-Key: already used for a different document"],
                        slug="idempotency-key-reused",
                    )
                recorder.count_repeat(first)
                return JSONResponse(first.answer, status_code=202)
            answer = {"messageId": str(uuid.uuid4()), "status": "accepted"}
            recorder.record(
                SERVICE,
                key,
                tenant=account,  # the recorder's owner field: here the AP account
                answer=answer,
                traceparent=request.headers.get("traceparent"),
                summary={
                    "invoice": response.invoice_number,
                    "response_code": response.response_code,
                    "sender": response.sender,
                    "receiver": response.receiver,
                    "fingerprint": fingerprint,
                },
            )
        return JSONResponse(answer, status_code=202)

    control = APIRouter(prefix="/_sandbox/peppol", tags=["sandbox control"])

    @control.post("/inbox", status_code=201)
    async def drop(document: InboxDrop) -> dict[str, Any]:
        """A supplier's access point delivers ``document`` into ``account``'s inbox."""
        return access_point.deliver(document).summary()

    @control.get("/inbox")
    async def inbox_and_answers() -> dict[str, Any]:
        """Every inbox message with its state, and the answers sent, by invoice."""
        answers: dict[str, list[dict[str, Any]]] = {}
        for reception in recorder.receptions(SERVICE):
            summary = reception.summary
            answers.setdefault(summary["invoice"], []).append(
                {
                    "status": summary["response_code"],
                    "sender": summary["sender"],
                    "receiver": summary["receiver"],
                    "message_id": reception.answer["messageId"],
                    "idempotency_key": reception.idempotency_key,
                    "arrivals": reception.arrivals,
                }
            )
        return {
            "messages": [
                m.summary() | m.state() | {"account": m.account, "fetches": m.fetches}
                for m in access_point.messages.values()
            ],
            "answers": answers,
        }

    routes = APIRouter()
    routes.include_router(api)
    routes.include_router(control)
    return routes


async def _json_body(request: Request) -> object | None:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to read
        return None


def _invalid(problems: list[str], slug: str = "invalid-document") -> JSONResponse:
    return problem(
        422,
        slug,
        "The request breaks the access point's contract",
        "; ".join(problems),
        errors=problems,
    )
