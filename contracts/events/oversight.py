"""What the regional oversight ("tutelle") decided on a transmitted decision (gateway.inbound).

The gateway's oversight adapter (``gateway/inbound/oversight.py``) polls the
modelled oversight service (``contracts/oversight/tutelle.wsdl``) for each
tenant that has an ``oversight_soap`` connector and publishes each outcome
once. The event's subject is the item id the decision was transmitted under,
so the meeting service finds its item without knowing the acknowledgement.
"""

from __future__ import annotations

from datetime import date
from typing import ClassVar, Literal

from pydantic import Field

from contracts.events.base import EventData
from contracts.events.peppol import INBOUND_TOPIC

OversightOutcome = Literal["approved", "annulled", "no_objection"]


class OversightOutcomeReceived(EventData):
    """The oversight decided on a decision: approved, annulled, or no objection in time.

    ``no_objection``: the legal period ended without a decision of the
    oversight, so the act is executory. ``annulled`` comes with the reason.
    """

    TYPE: ClassVar[str] = "gateway.oversight.outcome_received.v1"
    TOPIC: ClassVar[str] = INBOUND_TOPIC

    item_id: str = Field(description="The commune's reference of the act it transmitted")
    decision_number: str
    acknowledgement_number: str = Field(description="The oversight's number of the transmission")
    outcome: OversightOutcome
    decided_on: date
    reason: str | None = None
