"""Peppol participants, and the documents the gateway fetches from the access point.

``gateway.inbound`` carries what the gateway's inbound adapters fetched from
outside (here: business documents from the Peppol/Mercurius access point) for
the service that owns them.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.base import EventData

INBOUND_TOPIC = "gateway.inbound"
#: The largest business document the hub carries in an event. Kafka records are
#: capped at 8 MiB (``kernel.kafka.MAX_REQUEST_BYTES``); base64 adds a third and the
#: events that follow an invoice (its approval carries it for the accounting
#: software, with its lines) add more. A larger document is refused at the door.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


class PeppolEndpoint(BaseModel):
    """A Peppol participant: EAS scheme (``0208`` = Belgian enterprise number) and identifier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: str = Field(pattern=r"^[0-9]{4}$")
    identifier: str = Field(min_length=1, max_length=200)


class PeppolDocumentReceived(EventData):
    """The gateway fetched a business document from the Peppol/Mercurius access point.

    The tenant is the one whose Peppol endpoint is the receiver; documents for
    no known tenant never become events (the gateway keeps and shows them).
    """

    TYPE: ClassVar[str] = "gateway.peppol.document_received.v1"
    TOPIC: ClassVar[str] = INBOUND_TOPIC

    access_point_message_id: str
    sender: PeppolEndpoint
    receiver: PeppolEndpoint
    document_type: str = Field(description="Peppol document type identifier")
    document_base64: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
