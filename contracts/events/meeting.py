"""Events of the meeting service (college and council), on topic ``meeting.events``.

An agenda item moves created → proposed → validated → presented (in a
meeting) → decided. Every event's subject is the item's id (the meeting's id
for ``MeetingClosed``), so one item's events stay in order on one partition.
``ItemDecided`` carries what its consumers need without calling the meeting
service back: the urban tool matches it by ``external_identifier``,
notification uses ``concerned_party``, oversight transmission ("tutelle")
uses ``oversight_applies``, publication uses ``publication_required``.
A decision subject to oversight also stages ``DecisionTransmissionRequested``,
which the gateway routes to the Region; what the Region decides comes back as
``DecisionOversightOutcome``.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from contracts.events.base import EventData
from contracts.events.oversight import OversightOutcome
from contracts.identifiers import check_enterprise_number, check_niss

TOPIC = "meeting.events"

MeetingKind = Literal["college", "council"]
Decision = Literal["accepted", "accepted_with_amendments", "refused", "postponed"]
#: The decisions the regional oversight takes (``DecisionKind`` of contracts/oversight/tutelle.xsd):
#: a postponed item took none, gets no number and is never transmitted.
TRANSMITTED_DECISIONS: tuple[Decision, ...] = ("accepted", "accepted_with_amendments", "refused")
#: The most annexes one transmission carries (tutelle.xsd: ``Annex`` maxOccurs 50).
MAX_TRANSMITTED_ANNEXES = 50
ItemOrigin = Literal["rest", "ws4pm", "event"]


class ConcernedParty(BaseModel):
    """Who an item's decision concerns and is notified to: a person (NISS) or a company (BCE/KBO).

    The identifier is normalised to its digits (11 for a NISS, 10 for an
    enterprise number) and checked (modulo 97) when the model is built.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["person", "enterprise"]
    identifier: str = Field(
        # 9 to 11 digits, at most one separator between two, an enterprise number's "BE".
        pattern=r"^(?:[Bb][Ee] ?)?(?:[0-9][ ./-]?){8,10}[0-9]$",
        description="A person's national number (NISS/INSZ, 11 digits) or a company's "
        "enterprise number (BCE/KBO, 10 digits starting with 0 or 1; a pre-2005 9-digit one "
        "gets its leading 0). The hub sends the digits alone; a producer may write the usual "
        "punctuation (85.07.30-033.28, BE 0403.170.701), removed on receipt. Its last two "
        "digits are a modulo-97 check of the others (a NISS of someone born from 2000 on: of "
        '"2" followed by its first nine), and a NISS starts with a birth date: an identifier '
        "failing either check is refused.",
    )
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise_identifier(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("identifier"), str):
            check = check_niss if value.get("kind") == "person" else check_enterprise_number
            value = {**value, "identifier": check(value["identifier"])}
        return value


class ItemCreated(EventData):
    """An agenda item was created in a meeting configuration (by REST, WS4PM or an event)."""

    TYPE: ClassVar[str] = "meeting.item.created.v1"
    TOPIC: ClassVar[str] = TOPIC

    item_id: str
    meeting_config: str = Field(description="The tenant's meeting configuration, e.g. college")
    title: str
    proposing_service: str
    category: str | None = None
    external_identifier: str | None = Field(
        default=None, description="The document of another service the item is about"
    )
    origin: ItemOrigin
    #: The event that asked for the item (``urban.file.decision_needed.v1``), if any.
    requested_by_event_id: str | None = None


class ItemDecided(EventData):
    """The college or council took a decision on an item.

    ``decision_number`` is gap-free per meeting configuration and year; a
    postponed item gets none (no decision on the matter was taken).
    """

    TYPE: ClassVar[str] = "meeting.item.decided.v1"
    TOPIC: ClassVar[str] = TOPIC

    item_id: str
    meeting_id: str
    meeting_config: str
    meeting_kind: MeetingKind
    # With its UTC offset, as every time in these events: read without one, it took the
    # consumer's host zone, and the date of a decision's notification letter with it.
    meeting_date: AwareDatetime
    title: str
    decision: Decision
    decision_text: str
    decision_number: str | None = Field(description="e.g. COL/2026/0042; None when postponed")
    category: str | None = None
    external_identifier: str | None = None
    oversight_applies: bool = Field(
        description="The category is subject to regional oversight (tutelle): the decision "
        "must be transmitted to the Region"
    )
    publication_required: bool = Field(description="The decision must be published")
    concerned_party: ConcernedParty | None = None


class DecisionSummary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: str
    decision: Decision
    decision_number: str | None = None


class MeetingClosed(EventData):
    """A meeting was closed: every item presented in it has its decision."""

    TYPE: ClassVar[str] = "meeting.meeting.closed.v1"
    TOPIC: ClassVar[str] = TOPIC

    meeting_id: str
    meeting_config: str
    meeting_kind: MeetingKind
    meeting_date: AwareDatetime
    place: str
    decisions: list[DecisionSummary] = Field(default_factory=list)


class DecisionPublished(EventData):
    """A decision of a closed meeting was published (made public, e.g. on the commune's site)."""

    TYPE: ClassVar[str] = "meeting.decision.published.v1"
    TOPIC: ClassVar[str] = TOPIC

    item_id: str
    meeting_id: str
    meeting_config: str
    decision: Decision
    decision_number: str
    title: str
    decision_text: str
    category: str | None = None
    external_identifier: str | None = None
    published_at: AwareDatetime


class AnnexReference(BaseModel):
    """An annex of an item, by reference (its content stays with the meeting service)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    annex_id: str
    title: str
    filename: str
    media_type: str
    md5: str = Field(pattern=r"^[0-9a-f]{32}$", description="MD5 of the content, lower-case hex")


def _transmitted_decision(decision: Decision) -> Decision:
    if decision not in TRANSMITTED_DECISIONS:
        raise ValueError(
            f"a {decision} item took no decision: only {', '.join(TRANSMITTED_DECISIONS)} "
            "ones are transmitted to the regional oversight"
        )
    return decision


class DecisionTransmissionRequested(EventData):
    """A numbered decision whose category is subject to regional oversight must be transmitted.

    Staged with ``ItemDecided`` when ``oversight_applies``; the gateway routes
    it to the tenant's oversight connector. The item id is the transmission's
    idempotency key at the oversight service.
    """

    TYPE: ClassVar[str] = "meeting.decision.transmission_requested.v1"
    TOPIC: ClassVar[str] = TOPIC

    item_id: str
    meeting_id: str
    meeting_config: str
    meeting_kind: MeetingKind
    meeting_date: AwareDatetime
    # Typed Decision for its producers, who hold one; a postponed item is never transmitted.
    decision: Annotated[
        Decision,
        AfterValidator(_transmitted_decision),
        WithJsonSchema({"type": "string", "enum": list(TRANSMITTED_DECISIONS)}),
    ]
    decision_number: str
    category: str
    title: str
    decision_text: str
    annexes: list[AnnexReference] = Field(default_factory=list, max_length=MAX_TRANSMITTED_ANNEXES)


class DecisionOversightOutcome(EventData):
    """The regional oversight's outcome on a transmitted decision, as recorded on the item.

    ``annulled``: the decision is void (``reason`` says why); ``approved`` and
    ``no_objection`` (the legal period ended without a decision): it stands.
    """

    TYPE: ClassVar[str] = "meeting.decision.oversight_outcome.v1"
    TOPIC: ClassVar[str] = TOPIC

    item_id: str
    meeting_config: str
    decision_number: str
    acknowledgement_number: str
    outcome: OversightOutcome
    decided_on: date
    reason: str | None = None
