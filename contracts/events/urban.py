"""Events of the urban-planning service, on topic ``urban.events``.

The urban tool never calls the meeting service: it asks for a college or
council decision with ``DecisionNeeded`` and learns the outcome from
``meeting.item.decided.v1`` (matched by ``external_identifier``).
"""

from __future__ import annotations

from datetime import date
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.base import EventData
from contracts.events.meeting import ConcernedParty

TOPIC = "urban.events"

#: The longest texts of a decision request, in characters: those the meeting service's
#: agenda item takes (``services.meeting.domain.MAX_CONCERNED_PARTY_NAME``, ``MAX_ITEM_TEXT``).
#: A longer one was refused there and parked, and its file waited for a decision for ever.
DECISION_PARTY_NAME_LENGTH = 200
DECISION_TEXT_LENGTH = 200_000


class DecisionConcernedParty(ConcernedParty):
    """The applicant a decision concerns, with a name the agenda item can hold."""

    name: str | None = Field(default=None, max_length=DECISION_PARTY_NAME_LENGTH)


class DecisionNeeded(EventData):
    """An urban-planning file needs a decision: the meeting service creates the agenda item.

    The event's subject is the file id. Redelivery creates no second item: the
    meeting service keeps one item per configuration and ``external_identifier``.
    """

    TYPE: ClassVar[str] = "urban.file.decision_needed.v1"
    TOPIC: ClassVar[str] = TOPIC

    file_id: str
    title: str = Field(min_length=1, max_length=1000)
    proposing_service: str = Field(
        min_length=1, max_length=200, description="The commune's service proposing the item"
    )
    category: str | None = Field(default=None, description="A category of the configuration")
    description: str | None = Field(default=None, max_length=DECISION_TEXT_LENGTH)
    motivation: str | None = Field(default=None, max_length=DECISION_TEXT_LENGTH)
    meeting_config: str = Field(description="The configuration wanted, e.g. college")
    external_identifier: str = Field(
        min_length=1, max_length=200, description="Links the item (and its decision) to the file"
    )
    concerned_party: DecisionConcernedParty | None = Field(
        default=None, description="The applicant, to be notified of the decision"
    )


# -- the file and its procedure ---------------------------------------------------------

FileType = Literal[
    "permis_urbanisme",
    "permis_urbanisation",
    "certificat_urbanisme_1",
    "certificat_urbanisme_2",
    "declaration_urbanistique",
    "permis_unique",
    "permis_environnement_1",
    "permis_environnement_2",
    "declaration_classe_3",
]
NoticeResponseState = Literal["PARTIAL", "FINAL"]


class Applicant(BaseModel):
    """An applicant as declared on the request: a person (NISS) or a company (BCE/KBO)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["person", "enterprise"]
    identifier: str = Field(description="11-digit NISS or 10-digit enterprise number")
    name: str = Field(description="As declared: 'Last, First' for a person")
    address: str | None = None


class Parcel(BaseModel):
    """A cadastral parcel by its CaPaKey (e.g. ``25015A0123/00B000``) and address."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    capakey: str = Field(pattern=r"^[0-9]{5}[A-Z][0-9]{4}/[0-9]{2}[A-Z_][0-9]{3}$")
    address: str | None = None


class FileOpened(EventData):
    """A permit file was opened (from a NOTICe notification or at the counter)."""

    TYPE: ClassVar[str] = "urban.file.opened.v1"
    TOPIC: ClassVar[str] = TOPIC

    file_id: str
    reference: str = Field(description="The commune's file number, e.g. PU/2026/0012")
    file_type: FileType
    received_on: date
    applicants: list[Applicant]
    parcels: list[Parcel]
    notice_notification_id: str | None = None


class DeadlineWarning(EventData):
    """A legal deadline of a file is near (``approaching``) or has passed (``exceeded``)."""

    TYPE: ClassVar[str] = "urban.file.deadline_warning.v1"
    TOPIC: ClassVar[str] = TOPIC

    file_id: str
    reference: str
    deadline: str = Field(description="Which deadline, e.g. completeness, decision")
    due_on: date
    level: Literal["approaching", "exceeded"]


class NoticeResponseRequested(EventData):
    """Urban answers a NOTICe notification; the gateway posts it to the SPW's NOTICe.

    ``PARTIAL`` when the file is found complete (the procedure goes on), ``FINAL``
    with the college's decision.
    """

    TYPE: ClassVar[str] = "urban.notice.response_requested.v1"
    TOPIC: ClassVar[str] = TOPIC

    file_id: str
    notification_id: str = Field(description="NOTICe's notification id")
    instance_code: str = Field(description="The commune's NOTICe instance code")
    state: NoticeResponseState
    message: str = Field(description="What the commune tells the SPW, in plain words")
    decision: Literal["granted", "refused"] | None = None
    decision_number: str | None = None
    document_base64: str | None = Field(default=None, description="The decision, a PDF")


class IdentificationRequested(EventData):
    """Check an applicant's declared identity against the National Register (KSZ-BCSS).

    The gateway calls the KSZ-BCSS ``IdentifyPerson`` service; its receipt on
    ``gateway.receipts`` carries the registered identity in ``answer``.
    """

    TYPE: ClassVar[str] = "urban.applicant.identification_requested.v1"
    TOPIC: ClassVar[str] = TOPIC

    file_id: str
    niss: str = Field(pattern=r"^\d{11}$")
    declared_last_name: str
    declared_first_name: str | None = None
    declared_birth_date: date | None = None


class OpinionRequested(EventData):
    """Ask another body for its opinion on a file (fire service, regional official…)."""

    TYPE: ClassVar[str] = "urban.opinion.requested.v1"
    TOPIC: ClassVar[str] = TOPIC

    file_id: str
    opinion_id: str
    body: str = Field(description="The consulted body's code, e.g. SRI, FD, DNF")
    subject: str
    due_on: date
    reference: str = Field(description="The file's number, for the body's reply")


class DecisionDeadlineExtended(EventData):
    """The college extended a file's decision deadline, once, by 30 days (CoDT D.IV.46).

    The extension counts only if the college's decision to extend is sent to the
    applicant and to the delegated official before ``previous_due_on`` ends: a
    consumer that sends it has the dates and the reason here.
    """

    TYPE: ClassVar[str] = "urban.file.decision_deadline_extended.v1"
    TOPIC: ClassVar[str] = TOPIC

    file_id: str
    reference: str = Field(description="The file's number, e.g. PU/2026/0012")
    extended_on: date = Field(description="The day the extension was recorded")
    previous_due_on: date = Field(description="The decision deadline before the extension")
    due_on: date = Field(description="The decision deadline now, 30 days later")
    reason: str = Field(description="Why the college needs more time, in plain words")
