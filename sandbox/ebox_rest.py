"""Simulated federal e-Box Enterprise REST API: publication, federation, OAuth2 tokens.

Modelled on the contracts in the reference corpus (read at run time from
``HubSettings.corpus_dir``, never copied):

- ``contracts/ebox/e-Box-Enterprise-swagger-v2.1-AP-Public.yaml``: ``POST
  /ebox/rest/publishMessage``, a multipart/form-data request whose
  ``messageToPublish`` part is a JSON ``MessageToPublish`` and whose other
  parts are the attachments it names (``httpPartName``). It answers 201 with a
  ``PublicationStatusMessage`` (a new ``messageId``), or a ``StatusMessage``
  error (400 invalid data, 401 invalid authorization).
- ``contracts/ebox/ebox-federation-1.3.yaml``: ``POST
  /ebox/federation/v1/eboxPreferences/search``, which tells which recipients
  have a digital e-Box (those without one are left out of the answer).
- ``POST /ebox/oauth2/token``: OAuth2 client credentials (RFC 6749 §4.4).
  **Sandbox credentials**: client id ``hub-<tenant>`` (the tenant's 5-digit NIS
  code, e.g. ``hub-62063``) with secret ``sandbox-secret-<tenant>``. The token
  is opaque and stands for that tenant, which the sandbox records with each
  publication.

What ``/publishMessage`` checks, so that a connector bug shows up here rather
than at the real e-Box:

- a valid bearer token (401 otherwise);
- the JSON part against the contract's ``MessageToPublish`` JSON Schema, built
  from the swagger definitions. The sandbox is stricter than the swagger in one
  way: objects are closed (``additionalProperties: false``), so a misspelt
  optional field is an error instead of being silently ignored;
- what the schema cannot say: the recipient is a valid NISS (``citizen``) or
  enterprise number (``enterprise``); ``senderOrganizationId`` is a valid
  enterprise number (the contract's pattern is unanchored); the subject has a
  text; the message has a main content, as the contract's description demands;
- the attachments: each one named in the JSON is a part of the request and
  every file part is named; the part's media type is one the contract lists;
  a PDF starts with the PDF magic bytes; a declared ``sha_256`` digest matches
  (``AttachmentToPublish`` declares no size, so there is none to check);
- recipients without a digital e-Box (``sandbox/fixtures/ebox_recipients.yaml``)
  get the error code ``NO_DIGITAL_USER``, with status 400, the only business
  error status the contract gives ``/publishMessage``.

Idempotency: the hub sends ``Idempotency-Key`` (the real service ignores it);
a repeated key gets the first answer and publishes nothing new. The same key
with a different message or from another tenant is refused (422), as the IETF
Idempotency-Key draft suggests. Without the header every request is a new
publication, as on the real service.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from jsonschema import Draft4Validator, FormatChecker
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from contracts.identifiers import check_enterprise_number, check_niss, mask_niss
from kernel.settings import HubSettings
from sandbox.recorder import Recorder

SERVICE = "ebox_rest"
PUBLICATION_CONTRACT = Path("contracts/ebox/e-Box-Enterprise-swagger-v2.1-AP-Public.yaml")
FEDERATION_CONTRACT = Path("contracts/ebox/ebox-federation-1.3.yaml")
RECIPIENTS_WITHOUT_EBOX = Path(__file__).parent / "fixtures" / "ebox_recipients.yaml"

TOKEN_LIFETIME_SECONDS = 3600
#: How long a published message stays in the e-Box when the sender names no expirationDate.
DEFAULT_MESSAGE_VALIDITY = timedelta(days=365)
PDF_MAGIC = b"%PDF-"
_CLIENT_ID = re.compile(r"hub-([0-9]{5})")


# -- contracts --------------------------------------------------------------------------


def _closed(schema: Any) -> Any:
    """Copy of ``schema`` in which every object that lists its properties accepts no others."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if "properties" in closed and "$ref" not in closed:
        closed.setdefault("additionalProperties", False)
    return closed


#: The contract's yyyy-MM-dd'T'HH:mm:ssXXX: seconds, no fraction, an offset (``Z`` or ±hh:mm).
CONTRACT_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})"
)


def _contract_date_time(value: object) -> bool:
    # jsonschema checks "date-time" only with an optional package. The form is
    # matched first: fromisoformat alone also takes week dates, the basic format,
    # hour-only times…, which the e-Box refuses; it then checks the calendar.
    if not isinstance(value, str):
        return True
    if not CONTRACT_DATE_TIME.fullmatch(value):
        raise ValueError("the contract's form is yyyy-MM-dd'T'HH:mm:ssXXX")
    datetime.fromisoformat(value)
    return True


class SwaggerContract:
    """The ``definitions`` of a Swagger 2.0 document, as JSON Schema (draft 4) validators."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(
                f"e-Box contract {path} not found: HUB_CORPUS_DIR must name the reference corpus"
            )
        # The C loader reads the 1,600-line swagger seven times faster than the Python one.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
        self.definitions: dict[str, Any] = document["definitions"]
        self._closed_definitions = _closed(self.definitions)
        self._format_checker = FormatChecker(formats=())
        self._format_checker.checks("date-time", raises=ValueError)(_contract_date_time)

    def validator(self, definition: str) -> Draft4Validator:
        schema = {"$ref": f"#/definitions/{definition}", "definitions": self._closed_definitions}
        return Draft4Validator(schema, format_checker=self._format_checker)


def schema_errors(validator: Draft4Validator, document: object, root: str) -> list[str]:
    """Every violation, as ``"field.path: what is wrong"``, in document order."""
    errors = sorted(validator.iter_errors(document), key=lambda error: list(map(str, error.path)))
    return [
        f"{'.'.join(str(part) for part in error.absolute_path) or root}: {error.message}"
        # A format check's own reason says what the form should be.
        + (f" ({error.cause})" if error.validator == "format" and error.cause else "")
        for error in errors
    ]


# -- recipients -------------------------------------------------------------------------


@dataclass(frozen=True)
class EboxId:
    """A recipient as the contract names it: ``eboxType`` ``citizen`` or ``enterprise``."""

    ebox_type: str
    value: str

    @property
    def kind(self) -> str:
        """The hub's word for it (``Recipient.kind`` of the courrier events)."""
        return "person" if self.ebox_type == "citizen" else "enterprise"

    @property
    def masked(self) -> str:
        # National numbers are personal data; enterprise numbers are public (BCE/KBO register).
        return mask_niss(self.value) if self.ebox_type == "citizen" else self.value


def recipient_problem(ebox_type: str, value: str) -> str | None:
    """Why ``value`` is not a well-formed identifier for ``ebox_type``, or None."""
    digits = 11 if ebox_type == "citizen" else 10
    what = "a national number (NISS)" if ebox_type == "citizen" else "an enterprise number"
    if not re.fullmatch(f"[0-9]{{{digits}}}", value):
        return f"{what} is written as {digits} digits, without punctuation"
    try:
        (check_niss if ebox_type == "citizen" else check_enterprise_number)(value)
    except ValueError as exc:
        return str(exc)
    return None


def load_recipients_without_ebox(path: Path = RECIPIENTS_WITHOUT_EBOX) -> frozenset[EboxId]:
    fixture = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    recipients = [EboxId("citizen", str(v)) for v in fixture.get("citizens", [])] + [
        EboxId("enterprise", str(v)) for v in fixture.get("enterprises", [])
    ]
    for recipient in recipients:
        problem = recipient_problem(recipient.ebox_type, recipient.value)
        if problem:
            raise ValueError(f"{path}: {recipient.value!r}: {problem}")
    return frozenset(recipients)


# -- answers ----------------------------------------------------------------------------


def status_message(
    status: int,
    code: str,
    message: str,
    *,
    environment: str = "simulation",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The contract's error answer (definition ``StatusMessage``)."""
    body = {"id": str(uuid.uuid4()), "code": code, "message": message, "environment": environment}
    return JSONResponse(body, status_code=status, headers=headers)


def unauthorized(environment: str = "simulation") -> JSONResponse:
    return status_message(
        401,
        "INVALID_TOKEN",
        "Missing, unknown or expired bearer token: get one from POST /ebox/oauth2/token.",
        environment=environment,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


class InvalidPublication(Exception):
    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# -- tokens -----------------------------------------------------------------------------


class TokenIssuer:
    """Opaque bearer tokens, each standing for one tenant until it expires."""

    def __init__(self, lifetime_seconds: int = TOKEN_LIFETIME_SECONDS) -> None:
        self.lifetime_seconds = lifetime_seconds
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (tenant, expires at)

    def issue(self, tenant: str) -> str:
        now = time.monotonic()
        self._tokens = {t: held for t, held in self._tokens.items() if held[1] > now}
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (tenant, now + self.lifetime_seconds)
        return token

    def tenant_of(self, request: Request) -> str | None:
        """The tenant of the request's bearer token, or None when it has no valid one."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        held = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if held is None or held[1] <= time.monotonic():
            return None
        return held[0]


def tenant_of_client(client_id: str, client_secret: str) -> str | None:
    match = _CLIENT_ID.fullmatch(client_id)
    if match is None:
        return None
    tenant = match.group(1)
    return tenant if secrets.compare_digest(client_secret, f"sandbox-secret-{tenant}") else None


def oauth2_error(status: int, error: str, description: str) -> JSONResponse:
    """RFC 6749 §5.2 error answer."""
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


# -- publication ------------------------------------------------------------------------


@dataclass(frozen=True)
class Publication:
    recipient: EboxId
    subject: str
    attachments: int
    expiration_date: str | None
    #: Hash of the JSON part and the attachments' contents: one idempotency key, one message.
    fingerprint: str


@dataclass(frozen=True)
class Attached:
    """A file part of the request."""

    media_type: str | None
    content: bytes


def _digest_of(content: bytes) -> str:
    """SHA-256 in base64url without padding, as the contract's ``Digest`` carries it."""
    return base64.urlsafe_b64encode(hashlib.sha256(content).digest()).decode().rstrip("=")


class PublicationReader:
    """Reads a ``/publishMessage`` request and says everything that is wrong with it."""

    def __init__(self, contract: SwaggerContract) -> None:
        self._validator = contract.validator("MessageToPublish")
        self._media_types = frozenset(
            contract.definitions["Attachment"]["properties"]["mediaType"]["enum"]
        )

    async def read(self, request: Request) -> Publication:
        json_part, files = await self._parts(request)
        if json_part is None:
            raise InvalidPublication(["the messageToPublish part (the message's JSON) is missing"])
        try:
            message = json.loads(json_part)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to read
            raise InvalidPublication([f"messageToPublish is not valid JSON: {exc}"]) from exc
        problems = schema_errors(self._validator, message, "messageToPublish")
        if problems:  # the checks below rely on the shape the schema guarantees
            raise InvalidPublication(problems)
        problems = self._content_problems(message) + self._attachment_problems(message, files)
        if problems:
            raise InvalidPublication(problems)
        return Publication(
            recipient=EboxId(message["recipient"]["eboxType"], message["recipient"]["eboxIdValue"]),
            subject=_first_text(message["subject"]),
            attachments=len(files),
            expiration_date=message.get("expirationDate"),
            fingerprint=_fingerprint(message, files),
        )

    @staticmethod
    async def _parts(request: Request) -> tuple[str | None, dict[str, Attached]]:
        """The JSON part's text, and the file parts by name."""
        content_type = request.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise InvalidPublication(
                ["publishMessage takes multipart/form-data: a messageToPublish part and the files"]
            )
        try:
            form = await request.form()
        except HTTPException as exc:
            raise InvalidPublication([f"the multipart body cannot be read: {exc.detail}"]) from exc
        json_part: str | None = None
        files: dict[str, Attached] = {}
        try:
            for name, value in form.multi_items():
                if name == "messageToPublish":
                    if json_part is not None:
                        raise InvalidPublication(["messageToPublish is sent twice"])
                    # A client may send it as a plain field or as a part with a file name.
                    json_part = (
                        (await value.read()).decode("utf-8", "replace")
                        if isinstance(value, UploadFile)
                        else value
                    )
                elif isinstance(value, UploadFile):
                    if name in files:
                        raise InvalidPublication([f"part {name!r} is sent twice"])
                    media_type = (value.content_type or "").split(";")[0].strip().lower()
                    files[name] = Attached(media_type or None, await value.read())
                else:
                    raise InvalidPublication([f"unexpected form field {name!r}"])
        finally:
            await form.close()
        return json_part, files

    @staticmethod
    def _content_problems(message: dict[str, Any]) -> list[str]:
        problems = []
        recipient = message["recipient"]
        problem = recipient_problem(recipient["eboxType"], recipient["eboxIdValue"])
        if problem:
            problems.append(f"recipient.eboxIdValue: {problem}")
        sender = message.get("senderOrganizationId")
        sender_problem = recipient_problem("enterprise", sender) if sender is not None else None
        if sender_problem:
            problems.append(f"senderOrganizationId: {sender_problem}")
        if not _first_text(message["subject"]):
            problems.append("subject: give the subject's text in at least one of nl, fr, de")
        has_body = bool(_first_text(message.get("bodyContent", {})))
        if message["bodyMainContent"] and not has_body:
            problems.append("bodyMainContent: true, but the message has no bodyContent text")
        body_is_main = message["bodyMainContent"] and has_body
        if not body_is_main and not any(a["mainContent"] for a in message.get("attachments", [])):
            problems.append(
                "the message has no main content: set bodyMainContent with a bodyContent,"
                " or mainContent on an attachment"
            )
        return problems

    def _attachment_problems(
        self, message: dict[str, Any], files: dict[str, Attached]
    ) -> list[str]:
        problems = []
        named = [attachment["httpPartName"] for attachment in message.get("attachments", [])]
        for duplicate in sorted({name for name in named if named.count(name) > 1}):
            problems.append(f"attachments: part {duplicate!r} is named by two attachments")
        for unnamed in sorted(set(files) - set(named)):
            problems.append(f"part {unnamed!r} is sent but no attachment names it (httpPartName)")
        for index, attachment in enumerate(message.get("attachments", [])):
            at = f"attachments.{index}"
            part = attachment["httpPartName"]
            if part not in files:
                problems.append(f"{at}.httpPartName: the request has no file part {part!r}")
                continue
            media_type, content = files[part].media_type, files[part].content
            if media_type not in self._media_types:
                problems.append(
                    f"part {part!r}: media type {media_type!r} is not one the e-Box accepts"
                )
            if not content:
                problems.append(f"part {part!r} is empty")
            elif media_type == "application/pdf" and not content.startswith(PDF_MAGIC):
                problems.append(f"part {part!r} is declared application/pdf but is not a PDF")
            digest = attachment.get("digest")
            if digest is not None and digest["digestValue"].rstrip("=") != _digest_of(content):
                problems.append(
                    f"{at}.digest: the sha_256 digest does not match part {part!r}'s content"
                )
        return problems


def _fingerprint(message: dict[str, Any], files: dict[str, Attached]) -> str:
    contents = sorted((name, _digest_of(file.content)) for name, file in files.items())
    return hashlib.sha256(json.dumps([message, contents], sort_keys=True).encode()).hexdigest()


def _first_text(translated: dict[str, str]) -> str:
    return next((text.strip() for text in translated.values() if text.strip()), "")


# -- the routes -------------------------------------------------------------------------


def router(recorder: Recorder, settings: HubSettings) -> APIRouter:
    """The e-Box endpoints: ``/ebox/rest``, ``/ebox/federation/v1`` and ``/ebox/oauth2``."""
    publications = PublicationReader(SwaggerContract(settings.corpus_dir / PUBLICATION_CONTRACT))
    federation_contract = SwaggerContract(settings.corpus_dir / FEDERATION_CONTRACT)
    preferences_search = federation_contract.validator("EboxIdSameTypeList")
    without_ebox = load_recipients_without_ebox()
    tokens = TokenIssuer()

    oauth2 = APIRouter(prefix="/ebox/oauth2", tags=["sandbox: e-Box OAuth2"])

    @oauth2.post("/token")
    async def token(request: Request) -> JSONResponse:
        """Client credentials grant: ``hub-<tenant>`` / ``sandbox-secret-<tenant>``."""
        form = await request.form()
        fields = {name: value for name, value in form.items() if isinstance(value, str)}
        if "grant_type" not in fields:
            return oauth2_error(400, "invalid_request", "grant_type is missing (form-encoded body)")
        if fields["grant_type"] != "client_credentials":
            return oauth2_error(400, "unsupported_grant_type", "only client_credentials is offered")
        tenant = tenant_of_client(fields.get("client_id", ""), fields.get("client_secret", ""))
        if tenant is None:
            return oauth2_error(
                401,
                "invalid_client",
                "unknown client or wrong secret (sandbox: hub-<tenant> / sandbox-secret-<tenant>)",
            )
        answer: dict[str, Any] = {
            "access_token": tokens.issue(tenant),
            "token_type": "Bearer",
            "expires_in": tokens.lifetime_seconds,
        }
        if fields.get("scope"):
            answer["scope"] = fields["scope"]
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    publication = APIRouter(prefix="/ebox/rest", tags=["sandbox: e-Box REST publication"])

    @publication.post("/publishMessage", status_code=201)
    async def publish_message(request: Request) -> JSONResponse:
        if await recorder.inject_faults(SERVICE, request.headers.get("Idempotency-Key")):
            return status_message(
                503, "SERVICE_UNAVAILABLE", "The sandbox was told to fail this request."
            )
        tenant = tokens.tenant_of(request)
        if tenant is None:
            return unauthorized()
        try:
            message = await publications.read(request)
        except InvalidPublication as exc:
            return status_message(400, "INVALID_DATA", "; ".join(exc.problems))
        if message.recipient in without_ebox:
            return status_message(
                400,
                "NO_DIGITAL_USER",
                f"The {message.recipient.ebox_type} {message.recipient.masked} has no digital"
                " e-Box: this message cannot be delivered electronically.",
            )
        key = request.headers.get("Idempotency-Key") or f"no-key-{uuid.uuid4()}"
        async with recorder.lock:
            first = recorder.first(SERVICE, key)
            if first is not None:
                same_request = (first.tenant, first.summary.get("fingerprint")) == (
                    tenant,
                    message.fingerprint,
                )
                if not same_request:
                    recorder.count_reuse(first)  # not an arrival of the first message
                    return status_message(
                        422,
                        "IDEMPOTENCY_KEY_REUSED",
                        "This Idempotency-Key was already used for a different message.",
                    )
                recorder.count_repeat(first)
                return JSONResponse(first.answer, status_code=201)
            expires = message.expiration_date or (
                datetime.now(UTC) + DEFAULT_MESSAGE_VALIDITY
            ).isoformat(timespec="seconds")
            answer = {"messageId": str(uuid.uuid4()), "expirationDate": expires}
            recorder.record(
                SERVICE,
                key,
                tenant=tenant,
                answer=answer,
                traceparent=request.headers.get("traceparent"),
                summary={
                    "recipient_kind": message.recipient.kind,
                    "recipient": message.recipient.masked,
                    "subject": message.subject,
                    "attachments": message.attachments,
                    "fingerprint": message.fingerprint,
                },
            )
        return JSONResponse(answer, status_code=201)

    federation = APIRouter(prefix="/ebox/federation/v1", tags=["sandbox: e-Box federation"])

    @federation.post("/eboxPreferences/search")
    async def search_ebox_preferences(request: Request) -> JSONResponse:
        """The preferences of those recipients who have a digital e-Box; the others are left out."""
        # The federation contract spells its StatusMessage environments in capitals.
        if tokens.tenant_of(request) is None:
            return unauthorized(environment="SIMULATION")
        try:
            search = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested too deep
            return status_message(
                400, "INVALID_DATA", f"the body is not valid JSON: {exc}", environment="SIMULATION"
            )
        problems = schema_errors(preferences_search, search, "eboxIdSameTypeList")
        ebox_type = search["eboxType"].lower() if not problems else ""
        if not problems and ebox_type not in ("citizen", "enterprise"):
            problems.append("eboxType: CITIZEN or ENTERPRISE")
        if not problems:
            problems = [
                f"eboxIdValueList.{index}: {problem}"
                for index, value in enumerate(search["eboxIdValueList"])
                if (problem := recipient_problem(ebox_type, value))
            ]
        if problems:
            return status_message(
                400, "INVALID_DATA", "; ".join(problems), environment="SIMULATION"
            )
        return JSONResponse(
            [
                {
                    "eboxId": {"eboxType": search["eboxType"], "eboxIdValue": value},
                    "exclusivelyEbox": False,
                }
                for value in search["eboxIdValueList"]
                if EboxId(ebox_type, value) not in without_ebox
            ]
        )

    routes = APIRouter()
    for part in (oauth2, publication, federation):
        routes.include_router(part)
    return routes
