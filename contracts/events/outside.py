"""What the gateway's inbound adapters bring from regional services, on ``gateway.inbound``.

Each is published once per outside item (the gateway records what it fetched),
for the tenant the outside service addressed.
"""

from __future__ import annotations

from datetime import date
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from contracts.events.base import EventData
from contracts.events.peppol import INBOUND_TOPIC
from contracts.events.urban import Applicant, FileType, Parcel

METADATA_MISMATCH_LENGTH = 500


class NoticeDocument(BaseModel):
    """A document of a NOTICe notification, fetched and checked against its metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    document_id: str
    filename: str
    media_type: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_base64: str
    #: How the content (``size`` and ``sha256`` are the content's) differs from what
    #: NOTICe's metadata declared, when two fetches gave the same difference; absent
    #: otherwise. Urban keeps the document and shows the difference on the file. Added
    #: within v1, and sent only when there is a difference: upgrade urban before the
    #: gateway, or a difference makes urban of before keep the notification unprocessed.
    metadata_mismatch: str | None = Field(default=None, max_length=METADATA_MISMATCH_LENGTH)

    @model_serializer(mode="wrap")
    def _mismatch_only_when_there_is_one(
        self, serialise: SerializerFunctionWrapHandler
    ) -> dict[str, Any]:
        # Absent rather than null: a consumer from before the field (which refuses fields
        # it does not know) still takes the documents that match their metadata.
        data: dict[str, Any] = serialise(self)
        if data.get("metadata_mismatch") is None:
            data.pop("metadata_mismatch", None)
        return data


class NoticeNotificationReceived(EventData):
    """The SPW's NOTICe notified the commune of a request (a new file, or news of one)."""

    TYPE: ClassVar[str] = "gateway.notice.notification_received.v1"
    TOPIC: ClassVar[str] = INBOUND_TOPIC

    notification_id: str
    instance_code: str
    file_type: FileType
    received_on: date
    subject: str
    applicants: list[Applicant]
    parcels: list[Parcel]
    documents: list[NoticeDocument] = Field(default_factory=list)


class OpinionReceived(EventData):
    """A consulted body gave its opinion on a file."""

    TYPE: ClassVar[str] = "gateway.opinion.received.v1"
    TOPIC: ClassVar[str] = INBOUND_TOPIC

    opinion_id: str
    file_id: str
    body: str
    verdict: Literal["favourable", "favourable_with_conditions", "unfavourable"]
    text: str
    given_on: date
