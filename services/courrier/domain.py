"""The rules of the mail registry, without I/O.

- Registration numbers: ``E2026/000123`` (incoming) and ``S2026/000045``
  (outgoing, *sortant*), a gap-free sequence per tenant, year and direction.
  The year is Brussels' calendar year at registration.
- An outgoing mail moves ``draft → sending`` when a clerk sends it, then
  follows the gateway's receipts: ``sending → sent`` or ``sending → failed``;
  ``failed → sent`` when an operator replays a dead delivery and it succeeds.
  Incoming mail is ``registered`` and stays so.
- A letter is a PDF of at most 4 MiB; a recipient is a person (NISS) or an
  enterprise (BCE/KBO number); a scan matches the size and MD5 its scanner declared.

Rule violations are ``ProblemError`` subclasses: the API shows them as they are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Literal, Protocol

from contracts.events.gateway import DeliveryReceipt
from contracts.identifiers import check_enterprise_number, check_niss
from kernel.days import commune_day
from kernel.errors import Conflict, ProblemError

MAX_LETTER_BYTES = 4 * 1024 * 1024
PDF_SIGNATURE = b"%PDF-"


class Direction(StrEnum):
    INCOMING = "incoming"
    OUTGOING = "outgoing"

    @property
    def prefix(self) -> str:
        return "E" if self is Direction.INCOMING else "S"


class MailState(StrEnum):
    REGISTERED = "registered"
    DRAFT = "draft"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


# -- registration numbers -------------------------------------------------------------


def format_registration_number(direction: Direction, year: int, sequence: int) -> str:
    if sequence < 1:
        raise ValueError("registration sequences start at 1")
    return f"{direction.prefix}{year}/{sequence:06d}"


class RegistrationCounters(Protocol):
    """Hands out the next sequence of (tenant, year, direction), inside the caller's transaction."""

    async def next_sequence(self, tenant: str, year: int, direction: Direction) -> int: ...


async def allocate_registration_number(
    counters: RegistrationCounters, tenant: str, direction: Direction, moment: datetime
) -> str:
    year = commune_day(moment).year
    return format_registration_number(
        direction, year, await counters.next_sequence(tenant, year, direction)
    )


# -- incoming mail --------------------------------------------------------------------


class ReceivedInTheFuture(ProblemError):
    def __init__(self, received_on: date, today: date) -> None:
        super().__init__(
            422,
            "received-on-in-the-future",
            "Mail received in the future",
            f"received_on {received_on.isoformat()} is after today ({today.isoformat()}, "
            "Brussels time); check the date.",
        )


def check_received_on(received_on: date, now: datetime) -> None:
    today = commune_day(now)
    if received_on > today:
        raise ReceivedInTheFuture(received_on, today)


# -- scans ------------------------------------------------------------------------------

#: IMIO intake types registered as incoming mail. COUR_S (a scanned copy of an
#: outgoing letter) is not: outgoing mail is created by the outgoing-mail API.
INCOMING_SCAN_TYPES = frozenset({"COUR_E", "EMAIL", "FACT"})
#: IMIO's schema makes ``type`` optional; scanners of incoming mail leave it out.
DEFAULT_SCAN_TYPE = "COUR_E"


class UnsupportedScanType(ProblemError):
    def __init__(self, scan_type: str) -> None:
        super().__init__(
            422,
            "unsupported-scan-type",
            "This scan type is not registered here",
            f"Scans of type {scan_type} are not registered as incoming mail (accepted: "
            f"{', '.join(sorted(INCOMING_SCAN_TYPES))}); outgoing mail is created with "
            "POST /v1/outgoing-mails.",
        )


class ScanSizeMismatch(ProblemError):
    def __init__(self, declared: int, received: int) -> None:
        super().__init__(
            422,
            "scan-size-mismatch",
            "The uploaded file does not have the declared size",
            f"metadata.filesize says {declared} bytes but {received} bytes were uploaded; "
            "the upload is incomplete or the metadata belongs to another file.",
            declared_size=declared,
            received_size=received,
        )


class ScanChecksumMismatch(ProblemError):
    def __init__(self, declared: str, computed: str) -> None:
        super().__init__(
            422,
            "scan-checksum-mismatch",
            "The uploaded file does not have the declared MD5",
            f"metadata.filemd5 is {declared} but the uploaded file's MD5 is {computed}; "
            "the file was altered in transit or the metadata belongs to another file.",
            declared_md5=declared,
            computed_md5=computed,
        )


def scan_type_of(declared: str | None) -> str:
    scan_type = declared or DEFAULT_SCAN_TYPE
    if scan_type not in INCOMING_SCAN_TYPES:
        raise UnsupportedScanType(scan_type)
    return scan_type


def check_scan(content: bytes, declared_size: int, declared_md5: str) -> str:
    """Check the upload against its metadata; return its MD5 (lowercase hex)."""
    if len(content) != declared_size:
        raise ScanSizeMismatch(declared_size, len(content))
    computed = hashlib.md5(content).hexdigest()
    if computed != declared_md5.lower():
        raise ScanChecksumMismatch(declared_md5, computed)
    return computed


# -- outgoing mail --------------------------------------------------------------------

RecipientKind = Literal["person", "enterprise"]


class InvalidRecipientIdentifier(ProblemError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            422, "invalid-recipient-identifier", "Invalid recipient identifier", detail
        )


def normalise_recipient_identifier(kind: RecipientKind, identifier: str) -> str:
    """The identifier's digits, or an error saying what is wrong (never echoing the number)."""
    if kind == "person":
        try:
            return check_niss(identifier)
        except ValueError as exc:
            hint = ""
            try:
                check_enterprise_number(identifier)
                hint = "; it is an enterprise number: use recipient.kind 'enterprise'"
            except ValueError:
                pass
            raise InvalidRecipientIdentifier(f"recipient.identifier: {exc}{hint}") from exc
    try:
        return check_enterprise_number(identifier)
    except ValueError as exc:
        raise InvalidRecipientIdentifier(f"recipient.identifier: {exc}") from exc


class LetterTooLarge(ProblemError):
    def __init__(self, size: int) -> None:
        super().__init__(
            413,
            "letter-too-large",
            "The letter's PDF is too large",
            f"The PDF has {size} bytes; the e-Box accepts letters of at most "
            f"{MAX_LETTER_BYTES} bytes (4 MiB).",
            max_bytes=MAX_LETTER_BYTES,
        )


class NotAPdf(ProblemError):
    def __init__(self) -> None:
        super().__init__(
            422,
            "not-a-pdf",
            "The letter is not a PDF",
            "The letter's content must be a PDF document (starting with '%PDF-').",
        )


def check_letter(content: bytes) -> None:
    if len(content) > MAX_LETTER_BYTES:
        raise LetterTooLarge(len(content))
    if not content.startswith(PDF_SIGNATURE):
        raise NotAPdf()


class SendAlreadyRequested(Conflict):
    def __init__(self, registration_number: str, state: MailState | str) -> None:
        super().__init__(
            "send-already-requested",
            f"Outgoing mail {registration_number} is {state}: it can be sent only once, "
            "from the draft state.",
            state=str(state),
        )


def request_send(state: MailState, registration_number: str) -> MailState:
    if state is not MailState.DRAFT:
        raise SendAlreadyRequested(registration_number, state)
    return MailState.SENDING


@dataclass(frozen=True)
class Delivered:
    ebox_message_id: str | None


@dataclass(frozen=True)
class NotDelivered:
    reason: str


DeliveryOutcome = Delivered | NotDelivered


def outcome_of(receipt: DeliveryReceipt) -> DeliveryOutcome:
    if receipt.outcome == "delivered":
        return Delivered(receipt.external_reference)
    reason = receipt.reason or "no reason given"
    if receipt.outcome == "dead":
        return NotDelivered(f"gave up after {receipt.attempts} attempts: {reason}")
    return NotDelivered(reason)


def state_after(state: MailState, outcome: DeliveryOutcome) -> MailState | None:
    """The state a receipt leads to, or None when it changes nothing (a duplicate or a late one)."""
    if isinstance(outcome, Delivered):
        return MailState.SENT if state in (MailState.SENDING, MailState.FAILED) else None
    return MailState.FAILED if state is MailState.SENDING else None
