"""The rules of urban-planning and environmental permit files, without I/O.

- A file moves ``received → complete`` (or ``incomplete`` and back to
  ``received`` when the applicant completes it) ``→ awaiting_decision`` (every
  opinion is in, the public inquiry if any is over, and the college was asked
  for its decision) ``→ granted`` or ``refused``. A postponed item leaves the
  file awaiting its decision.
- Opinions are asked for once the file is complete and before the decision is
  asked for; the file is ready when the last one is in.
- Applicants are people (NISS) or companies (enterprise number), checked
  modulo 97; parcels are named by their CaPaKey.
- A file opened from a NOTICe notification answers it twice: ``PARTIAL`` when
  found complete, ``FINAL`` with the decision; after ``FINAL`` the
  notification is closed and takes no more answers, unless NOTICe refuses the
  ``FINAL`` for good: it is open again for a corrected ``FINAL``.

Rule violations are ``ProblemError`` subclasses: REST shows them as they are,
the consumers keep the event that broke them, with the detail, for operators.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date
from enum import StrEnum
from typing import Literal, get_args

from contracts.events.urban import Applicant, FileType
from contracts.identifiers import check_enterprise_number, check_niss
from kernel.api import EARLIEST_DAY
from kernel.errors import Conflict, ProblemError
from services.urban.deadlines import EXTENDABLE_FILE_TYPES

FILE_TYPES: tuple[FileType, ...] = get_args(FileType)

#: The prefix of each file type's reference, ``<prefix>/<year>/<sequence>``.
REFERENCE_PREFIXES: dict[FileType, str] = {
    "permis_urbanisme": "PU",
    "permis_urbanisation": "PURB",
    "certificat_urbanisme_1": "CU1",
    "certificat_urbanisme_2": "CU2",
    "declaration_urbanistique": "DU",
    "permis_unique": "PUN",
    "permis_environnement_1": "PE1",
    "permis_environnement_2": "PE2",
    "declaration_classe_3": "DC3",
}
REFERENCE_PATTERN = re.compile(r"^(" + "|".join(REFERENCE_PREFIXES.values()) + r")/\d{4}/\d{4,}$")

TITLES: dict[FileType, str] = {
    "permis_urbanisme": "Permis d'urbanisme",
    "permis_urbanisation": "Permis d'urbanisation",
    "certificat_urbanisme_1": "Certificat d'urbanisme n°1",
    "certificat_urbanisme_2": "Certificat d'urbanisme n°2",
    "declaration_urbanistique": "Déclaration urbanistique",
    "permis_unique": "Permis unique",
    "permis_environnement_1": "Permis d'environnement (classe 1)",
    "permis_environnement_2": "Permis d'environnement (classe 2)",
    "declaration_classe_3": "Déclaration de classe 3",
}

# division (5 digits) section (letter) radical (4 digits) / bis (2 digits)
# exposant (letter or _) puissance (3 digits)
# [0-9], not \d: \d takes any script's digits (Arabic-Indic ones made a CaPaKey).
_CAPAKEY = re.compile(r"^([0-9]{5})([A-Z])([0-9]{4})/([0-9]{2})([A-Z_])([0-9]{3})$")


class FileState(StrEnum):
    RECEIVED = "received"
    INCOMPLETE = "incomplete"
    COMPLETE = "complete"
    AWAITING_DECISION = "awaiting_decision"
    GRANTED = "granted"
    REFUSED = "refused"


DECIDED_STATES = frozenset({FileState.GRANTED, FileState.REFUSED})
#: Where opinions may be asked for, an inquiry recorded and the decision asked for.
INSTRUCTION_STATES = frozenset({FileState.COMPLETE})
#: Where the decision may be asked for: again while none came, for meeting may have been
#: unable to place the first request (it keeps one item per file, so a placed one is not
#: doubled).
DECISION_REQUEST_STATES = INSTRUCTION_STATES | {FileState.AWAITING_DECISION}

#: The gateway's outcomes of a delivery that did not happen (``DeliveryReceipt``).
UNDELIVERED = frozenset({"failed", "dead"})


class IdentityStatus(StrEnum):
    """How an applicant's declared identity compares with the National Register's."""

    NOT_CHECKED = "not_checked"  # a company, or a person before the request leaves
    REQUESTED = "requested"
    MATCHED = "matched"
    MISMATCH = "mismatch"
    NOT_FOUND = "not_found"
    FAILED = "failed"  # the register could not be asked (the gateway's receipt failed)


FLAGGED_IDENTITIES = frozenset({IdentityStatus.MISMATCH, IdentityStatus.NOT_FOUND})

#: A meeting decision and the permit outcome it gives; a postponement gives none.
DECISION_OUTCOMES: dict[str, FileState] = {
    "accepted": FileState.GRANTED,
    "accepted_with_amendments": FileState.GRANTED,
    "refused": FileState.REFUSED,
}


# -- errors ---------------------------------------------------------------------------


class InvalidCapakey(ProblemError):
    def __init__(self, capakey: str) -> None:
        super().__init__(
            422,
            "invalid-capakey",
            "Invalid CaPaKey",
            f"{capakey!r} is not a CaPaKey: it reads division (5 digits), section (a capital "
            "letter), radical (4 digits), '/', bis (2 digits), exposant (a capital letter or "
            "'_') and puissance (3 digits), e.g. 25015A0123/00B000.",
            capakey=capakey,
        )


class InvalidIdentifier(ProblemError):
    def __init__(self, kind: str, reason: str) -> None:
        slug = "invalid-national-number" if kind == "person" else "invalid-enterprise-number"
        super().__init__(422, slug, "Invalid applicant identifier", f"Applicant: {reason}.")


class UnknownFileType(ProblemError):
    def __init__(self, file_type: object) -> None:
        super().__init__(
            422,
            "unknown-file-type",
            "Unknown file type",
            f"{file_type!r} is no file type of the CoDT or the environmental permit decree "
            f"(known: {', '.join(FILE_TYPES)}).",
        )


class DocumentMismatch(ProblemError):
    def __init__(self, document_id: str, reason: str) -> None:
        super().__init__(
            422,
            "document-mismatch",
            "A document is not what its metadata says",
            f"Document {document_id!r}: {reason}.",
            document_id=document_id,
        )


class RequestWithout(ProblemError):
    """A request to file names no applicant, or no parcel: a NOTICe notification may (its
    contract allows empty lists), a file may not (nobody to notify, nothing to permit)."""

    def __init__(self, part: Literal["applicant", "parcel"]) -> None:
        super().__init__(
            422,
            f"no-{part}",
            f"A request without any {part}",
            f"The request names no {part}; a permit file needs at least one.",
        )


class ReceivedInTheFuture(ProblemError):
    def __init__(self, received_on: date, today: date) -> None:
        super().__init__(
            422,
            "received-in-the-future",
            "A request received in the future",
            f"The request says it was received on {received_on.isoformat()}, after today"
            f" ({today.isoformat()}); its deadlines would count from a day to come.",
        )


class ReceivedTooLongAgo(ProblemError):
    def __init__(self, received_on: date) -> None:
        super().__init__(
            422,
            "received-too-long-ago",
            "A request received before the calendar this service keeps",
            f"The request says it was received on {received_on.isoformat()}, before"
            f" {EARLIEST_DAY.isoformat()}.",
        )


class UnfitText(ProblemError):
    """A text of an inbound event that the file's tables cannot hold as said (too long, or
    with a control character PostgreSQL refuses): refused whole, named, rather than failing
    the consumer's batch with the database's error (and the applicant's NISS in it)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(
            422, "unfit-text", "A text the file cannot hold", f"{field}: {reason}.", field=field
        )


class DuplicateDocument(ProblemError):
    def __init__(self, document_id: str) -> None:
        super().__init__(
            422,
            "duplicate-document",
            "Two documents under one id",
            f"The notification carries two documents with the id {document_id!r}.",
            document_id=document_id,
        )


class OpinionFromAnotherBody(ProblemError):
    def __init__(self, opinion_id: str, asked: str, answered: str) -> None:
        super().__init__(
            422,
            "opinion-from-another-body",
            "An opinion given by another body than the one asked",
            f"Opinion request {opinion_id} was sent to {asked!r}, but the answer comes from"
            f" {answered!r}: it was not recorded.",
            asked=asked,
            answered=answered,
        )


class OpinionAlreadyRecorded(Conflict):
    def __init__(self, opinion_id: str, recorded: str, received_on: date, answered: str) -> None:
        super().__init__(
            "opinion-already-recorded",
            f"Opinion request {opinion_id} has its answer already ({recorded}, recorded on"
            f" {received_on.isoformat()}); this other answer ({answered}) was not recorded"
            " over it.",
            recorded=recorded,
            answered=answered,
        )


class ComplementsBeforeTheirRequest(ProblemError):
    def __init__(self, reference: str, came_on: date, asked_on: date | None) -> None:
        asked = f"asked for on {asked_on.isoformat()}" if asked_on else "asked for"
        super().__init__(
            422,
            "complements-before-their-request",
            "Complements dated before they were asked for",
            f"File {reference}: complements received on {came_on.isoformat()}, before the"
            f" missing documents were {asked}.",
        )


class DeemedComplete(Conflict):
    def __init__(self, reference: str, since: date, what: str) -> None:
        super().__init__(
            "deemed-complete",
            f"File {reference} is deemed complete since {since.isoformat()}: its completeness"
            f" check went unanswered in its days (CoDT D.IV.33), and its decision days run"
            f" from then; {what} cannot start it over. Declare it complete.",
            since=since.isoformat(),
        )


class DayOutOfProcedure(ProblemError):
    """A day that the procedure's order rules out (an inquiry before completeness, an
    opinion due before it is asked)."""

    def __init__(self, slug: str, detail: str) -> None:
        super().__init__(422, slug, "A day out of the procedure's order", detail)


class WrongNoticeInstance(ProblemError):
    def __init__(self, instance_code: str, tenant: str, expected: str | None) -> None:
        expected_text = (
            f"this tenant's NOTICe instance is {expected!r}"
            if expected
            else "this tenant has no NOTICe instance configured (notice.instance)"
        )
        super().__init__(
            422,
            "wrong-notice-instance",
            "The notification is addressed to another commune",
            f"The notification names NOTICe instance {instance_code!r}, but {expected_text}; "
            f"it was published for tenant {tenant}.",
        )


class NotificationClosed(Conflict):
    def __init__(self, notification_id: str) -> None:
        super().__init__(
            "notice-notification-closed",
            f"NOTICe notification {notification_id} is closed: its FINAL response (the "
            "decision) was sent, it takes no more responses.",
            notification_id=notification_id,
        )


class DecisionFromAnotherMeeting(Conflict):
    def __init__(self, reference: str, meeting_config: str, expected: str) -> None:
        super().__init__(
            "decision-from-another-meeting",
            f"File {reference} asked {expected} for its decision; an item decided by"
            f" {meeting_config} that names it is not that decision.",
            meeting_config=meeting_config,
        )


class NotANoticeFile(Conflict):
    def __init__(self, reference: str) -> None:
        super().__init__(
            "not-a-notice-file",
            f"File {reference} was not opened from a NOTICe notification: there is nothing "
            "to answer.",
        )


class StateForbids(Conflict):
    def __init__(self, reference: str, state: str, action: str, allowed: list[str]) -> None:
        super().__init__(
            "file-state-forbids",
            f"File {reference} is {state}: {action} applies to a file that is "
            f"{' or '.join(sorted(allowed))}.",
            state=state,
        )


class ConcurrentFileChange(Conflict):
    def __init__(self, reference: str) -> None:
        super().__init__(
            "concurrent-file-change",
            f"File {reference} was changed by something else (an identity check, an opinion "
            "or a decision that came in) while this request changed it; nothing was stored: "
            "reload the file and try again.",
        )


class OpinionsPending(Conflict):
    def __init__(self, reference: str, bodies: list[str]) -> None:
        super().__init__(
            "opinions-pending",
            f"File {reference} still waits for the opinion of {', '.join(bodies)}; an"
            " opinion not given by its due day is deemed favourable from the day after.",
            pending=bodies,
        )


class OpinionRequestNotDelivered(Conflict):
    def __init__(self, reference: str, bodies: list[str]) -> None:
        super().__init__(
            "opinion-request-not-delivered",
            f"File {reference}: the opinion request to {', '.join(bodies)} was not delivered"
            " (the gateway's receipt failed), so the body was never consulted and its silence"
            " cannot be deemed favourable (CoDT D.IV.37). Ask the body again.",
            undelivered=bodies,
        )


class InquiryRunning(Conflict):
    def __init__(self, reference: str, ends_on: str) -> None:
        super().__init__(
            "inquiry-running",
            f"File {reference}: its public inquiry runs until {ends_on}.",
            ends_on=ends_on,
        )


# -- checks ---------------------------------------------------------------------------


def check_capakey(value: str) -> str:
    capakey = value.strip().upper()
    if not _CAPAKEY.match(capakey):
        raise InvalidCapakey(value)
    return capakey


def check_applicant(applicant: Applicant) -> Applicant:
    """The applicant with its identifier reduced to its digits, or the rule it breaks."""
    check = check_niss if applicant.kind == "person" else check_enterprise_number
    try:
        identifier = check(applicant.identifier)
    except ValueError as exc:
        raise InvalidIdentifier(applicant.kind, str(exc)) from exc
    return applicant.model_copy(update={"identifier": identifier})


#: A consulted body's code as the service keeps it: capitals, digits, "_", "." and "-"
#: ("SRI", "FD", "DNF"); "FD " with a space was another body, and the delegated
#: official's opinion then set no 115-day decision time.
BODY_CODE_PATTERN = r"^[A-Z0-9][A-Z0-9_.-]*$"


def comparable_body(code: str) -> str:
    """A body's code as given (an answer's, or a request stored before codes were checked)
    reduced to the form the service keeps."""
    return code.strip().upper()


def check_file_type(value: object) -> FileType:
    for file_type in FILE_TYPES:
        if value == file_type:
            return file_type
    raise UnknownFileType(value)


def check_state(reference: str, state: str, action: str, allowed: frozenset[FileState]) -> None:
    if FileState(state) not in allowed:
        raise StateForbids(reference, state, action, [str(s) for s in allowed])


# -- identities -------------------------------------------------------------------------


def split_declared_name(name: str) -> tuple[str, str | None]:
    """``"Dupont, Marie"`` → (``"Dupont"``, ``"Marie"``); a name without comma is a last name."""
    last, _, first = name.partition(",")
    return last.strip(), (first.strip() or None)


def comparable(name: str) -> str:
    """Case, accents, hyphens and spacing do not make two names different."""
    decomposed = unicodedata.normalize("NFKD", name)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[-'’.]", " ", letters).casefold().split())


def identity_status(
    declared_last: str, declared_first: str | None, answer: dict[str, str | None]
) -> IdentityStatus:
    """Compare a declared identity with the register's answer (``last_name``, ``first_names``)."""
    if (answer.get("status") or "found") != "found":
        return IdentityStatus.NOT_FOUND
    if comparable(declared_last) != comparable(answer.get("last_name") or ""):
        return IdentityStatus.MISMATCH
    if declared_first is None:
        return IdentityStatus.MATCHED
    registered = comparable(answer.get("first_names") or "")
    declared = comparable(declared_first)
    # A person often declares only the first of their registered first names.
    if registered == declared or registered.startswith(declared + " "):
        return IdentityStatus.MATCHED
    return IdentityStatus.MISMATCH


def format_reference(file_type: FileType, year: int, sequence: int) -> str:
    return f"{REFERENCE_PREFIXES[file_type]}/{year}/{sequence:04d}"


# -- the college's extension of its decision deadline (CoDT D.IV.46, last paragraph) --


class DecisionDeadlineNotExtendable(Conflict):
    def __init__(self, reference: str, file_type: FileType) -> None:
        super().__init__(
            "decision-deadline-not-extendable",
            f"File {reference} is a {file_type} ({TITLES[file_type]}): only the decision "
            "deadline of a procedure of CoDT D.IV.46 may be extended "
            f"({', '.join(EXTENDABLE_FILE_TYPES)}).",
            file_type=file_type,
        )


class DecisionDeadlineAlreadyExtended(Conflict):
    def __init__(self, reference: str, extended_on: date) -> None:
        super().__init__(
            "decision-deadline-already-extended",
            f"File {reference}: the college already extended its decision deadline on "
            f"{extended_on.isoformat()}; CoDT D.IV.46 allows one extension only.",
            extended_on=extended_on.isoformat(),
        )


class FileAlreadyDecided(Conflict):
    def __init__(self, reference: str, decided_on: date) -> None:
        super().__init__(
            "file-already-decided",
            f"File {reference} was decided on {decided_on.isoformat()}: its decision "
            "deadline can no longer be extended.",
            decided_on=decided_on.isoformat(),
        )


class DecisionClockNotStarted(Conflict):
    def __init__(self, reference: str, state: str) -> None:
        super().__init__(
            "decision-clock-not-started",
            f"File {reference} is {state}, not yet found complete: its decision deadline has "
            "not started, and a deadline that has not started cannot be extended.",
            state=state,
        )


class DecisionDeadlinePassed(Conflict):
    def __init__(self, reference: str, due_on: date) -> None:
        super().__init__(
            "decision-deadline-passed",
            f"File {reference}: its decision deadline ended on {due_on.isoformat()}; the "
            "college may extend it only before it ends.",
            due_on=due_on.isoformat(),
        )
