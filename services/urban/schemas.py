"""The REST API's request and response documents.

Requests refuse unknown fields (``extra="forbid"``): a misspelt field is an
error the caller sees, not a value silently dropped. Identifiers and CaPaKeys
are checked by the domain (``permits.checked_new_file``) so that their errors
have their own Problem types.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from contracts.events.urban import FileType, NoticeResponseState
from kernel.api import RequestModel
from services.urban import deadlines
from services.urban.domain import BODY_CODE_PATTERN, FileState, IdentityStatus, comparable_body
from services.urban.permits import contents_apart, facts_of
from services.urban.tables import (
    FileApplicant,
    FileDocument,
    NoticeResponse,
    Opinion,
    PermitFile,
    UnprocessedEvent,
)


class ApplicantIn(RequestModel):
    kind: Literal["person", "enterprise"]
    identifier: str = Field(
        max_length=30, description="NISS (11 digits) or enterprise number (10 digits)"
    )
    name: str = Field(min_length=1, max_length=300, description="'Last, First' for a person")
    address: str | None = Field(default=None, max_length=500)


class ParcelIn(RequestModel):
    capakey: str = Field(max_length=30, examples=["25015A0123/00B000"])
    address: str | None = Field(default=None, max_length=500)


class FileCreate(RequestModel):
    file_type: FileType
    subject: str = Field(min_length=1, max_length=2000)
    received_on: date
    applicants: list[ApplicantIn] = Field(min_length=1, max_length=50)
    parcels: list[ParcelIn] = Field(min_length=1, max_length=200)


class IncompleteBody(RequestModel):
    missing_documents: list[str] = Field(min_length=1, max_length=100)


class ComplementsBody(RequestModel):
    received_on: date | None = Field(
        default=None, description="The day the complements came; today when not given"
    )


class InquiryBody(RequestModel):
    starts_on: date


class DecisionExtensionBody(RequestModel):
    reason: str = Field(
        min_length=1,
        max_length=2000,
        description="Why the college needs more time, as its decision says",
        examples=["Instruction d'un complément d'information sur l'impact paysager"],
    )


class OpinionCreate(RequestModel):
    body: str = Field(
        min_length=1,
        max_length=50,
        pattern=BODY_CODE_PATTERN,
        examples=["SRI", "FD", "DNF"],
        description="The body's code; spaces around it are dropped, letters made capitals",
    )

    @field_validator("body", mode="before")
    @classmethod
    def _body_code(cls, value: object) -> object:
        return comparable_body(value) if isinstance(value, str) else value

    subject: str = Field(min_length=1, max_length=2000)
    due_on: date


class NoticeResponseCreate(RequestModel):
    message: str = Field(min_length=1, max_length=4000)
    state: NoticeResponseState = Field(
        default="PARTIAL",
        description=(
            "PARTIAL: news of the procedure. FINAL: the decided file's decision, sent by the"
            " decision itself; send it here again when NOTICe refused it for good."
        ),
    )


class ApplicantView(BaseModel):
    kind: Literal["person", "enterprise"]
    identifier: str
    name: str
    address: str | None
    identity_status: IdentityStatus
    registered_name: str | None = Field(description="As the National Register has it")

    @classmethod
    def of(cls, applicant: FileApplicant) -> ApplicantView:
        return cls(
            kind="person" if applicant.kind == "person" else "enterprise",
            identifier=applicant.identifier,
            name=applicant.name,
            address=applicant.address,
            identity_status=IdentityStatus(applicant.identity_status),
            registered_name=applicant.registered_name,
        )


class OpinionView(BaseModel):
    id: str
    body: str
    subject: str
    due_on: date
    requested_at: datetime
    verdict: str | None
    text: str | None
    given_on: date | None
    received_on: date | None
    delivery: str | None = Field(
        description=(
            "The request's delivery to the body: pending, delivered, failed or dead (the"
            " gateway's receipt); null for requests made before it was followed. A request"
            " failed or dead never reached the body: ask it again."
        )
    )

    @classmethod
    def of(cls, opinion: Opinion) -> OpinionView:
        return cls(
            id=opinion.id,
            body=opinion.body,
            subject=opinion.subject,
            due_on=opinion.due_on,
            requested_at=opinion.requested_at,
            verdict=opinion.verdict,
            text=opinion.text,
            given_on=opinion.given_on,
            received_on=opinion.received_on,
            delivery=opinion.delivery,
        )


class DocumentView(BaseModel):
    document_id: str
    filename: str
    media_type: str
    size: int
    sha256: str
    metadata_mismatch: str | None = Field(
        description=(
            "How the document received differs from what NOTICe's metadata declared of it"
            " (size, SHA-256); null when it does not. Ask NOTICe for the document again."
        )
    )

    @classmethod
    def of(cls, document: FileDocument) -> DocumentView:
        return cls(
            document_id=document.document_id,
            filename=document.filename,
            media_type=document.media_type,
            size=document.size,
            sha256=document.sha256,
            metadata_mismatch=document.metadata_mismatch,
        )


class DeadlineView(BaseModel):
    name: str = Field(examples=["completeness", "decision", "opinion:SRI"])
    due_on: date
    met_on: date | None


class NoticeResponseView(BaseModel):
    event_id: str
    state: Literal["PARTIAL", "FINAL"]
    message: str
    delivery: str = Field(description="pending, delivered, failed or dead")
    created_at: datetime

    @classmethod
    def of(cls, response: NoticeResponse) -> NoticeResponseView:
        return cls(
            event_id=response.event_id,
            state="FINAL" if response.state == "FINAL" else "PARTIAL",
            message=response.message,
            delivery=response.delivery,
            created_at=response.created_at,
        )


class FileSummary(BaseModel):
    id: str
    reference: str = Field(examples=["PU/2026/0012"])
    file_type: FileType
    state: FileState
    subject: str
    received_on: date
    identity_flagged: bool = Field(
        description="An applicant's declared identity differs from the National Register's"
    )
    next_deadline: str | None
    next_deadline_on: date | None
    notice_notification_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, file: PermitFile) -> FileSummary:
        return cls(**_summary_fields(file))


def _summary_fields(file: PermitFile) -> dict[str, Any]:
    return {
        "id": file.id,
        "reference": file.reference,
        "file_type": file.file_type,
        "state": FileState(file.state),
        "subject": file.subject,
        "received_on": file.received_on,
        "identity_flagged": file.identity_flagged,
        "next_deadline": file.next_deadline,
        "next_deadline_on": file.next_deadline_on,
        "notice_notification_id": file.notice_notification_id,
        "created_at": file.created_at,
    }


class FileView(FileSummary):
    complete_on: date | None
    missing_documents: list[str] | None
    complements_received_on: date | None = Field(
        description="The day the missing documents came; the completeness check counts from it"
    )
    inquiry_starts_on: date | None
    decision: Literal["granted", "refused"] | None
    decision_number: str | None
    decided_on: date | None
    decision_extended_on: date | None = Field(
        description="The day the college extended its decision deadline by 30 days (once)"
    )
    notified_on: date | None
    notice_state: str | None = Field(
        description=(
            "open, partial_sent or closed (FINAL sent); partial_sent again when NOTICe refused"
            " the FINAL for good (its delivery in notice_responses), for a corrected FINAL"
        )
    )
    applicants: list[ApplicantView]
    parcels: list[dict[str, str | None]]
    opinions: list[OpinionView]
    documents: list[DocumentView]
    deadlines: list[DeadlineView]
    notice_responses: list[NoticeResponseView]
    updated_at: datetime

    @classmethod
    def of_file(cls, file: PermitFile, responses: list[NoticeResponse]) -> FileView:
        return cls(
            **_summary_fields(file),
            complete_on=file.complete_on,
            missing_documents=file.missing_documents,
            complements_received_on=file.complements_received_on,
            inquiry_starts_on=file.inquiry_starts_on,
            decision="granted"
            if file.decision == "granted"
            else "refused"
            if file.decision == "refused"
            else None,
            decision_number=file.decision_number,
            decided_on=file.decided_on,
            decision_extended_on=file.decision_extended_on,
            notified_on=file.notified_on,
            notice_state=file.notice_state,
            applicants=[ApplicantView.of(applicant) for applicant in file.applicants],
            parcels=[{"capakey": p.capakey, "address": p.address} for p in file.parcels],
            opinions=[OpinionView.of(opinion) for opinion in file.opinions],
            documents=[DocumentView.of(document) for document in file.documents],
            deadlines=[
                DeadlineView(name=d.name, due_on=d.due_on, met_on=d.met_on)
                for d in deadlines.deadlines(facts_of(file))
            ],
            notice_responses=[NoticeResponseView.of(response) for response in responses],
            updated_at=file.updated_at,
        )


class UnprocessedView(BaseModel):
    event_id: str
    event_type: str
    subject: str
    problem: str = Field(description="The Problem type slug, e.g. invalid-capakey")
    reason: str
    data: dict[str, Any] | None
    received_at: datetime

    @classmethod
    def of(cls, row: UnprocessedEvent) -> UnprocessedView:
        return cls(
            event_id=row.event_id,
            event_type=row.event_type,
            subject=row.subject,
            problem=row.problem,
            reason=row.reason,
            # Rows kept before the bytes were stored apart (migration 9) still hold them.
            data=contents_apart(row.data)[0],
            received_at=row.received_at,
        )


class ReplayOutcome(BaseModel):
    """A kept event applied on replay, and the file it opened or changed (none for a
    decision on another service's item, or the same opinion given again)."""

    event_id: str
    event_type: str
    file_id: str | None
    reference: str | None
