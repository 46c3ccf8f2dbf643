# zeep ships py.typed but leaves most functions unannotated; calling them is intended here.
"""Connector to the regional oversight ("tutelle") service, a modelled SOAP contract.

The Region publishes no machine contract for it: ``contracts/oversight/tutelle.wsdl``
models one (see its first lines). One ``meeting.decision.transmission_requested.v1``
event becomes one ``transmitDecision`` call, signed with the tenant's X.509
certificate exactly as the e-Box SOAP connector signs (``gateway.connectors.soap``,
``gateway.wssecurity``); the answer's acknowledgement number is the delivery's
external reference.

Idempotency: the item id travels in the signed Body as ``ItemId``, which the
contract makes the service's idempotency key (an item is transmitted once, and
the same ItemId sent again gets the first acknowledgement); the delivery's
key also travels as the ``Idempotency-Key`` header.

The same connector reads the oversight's outcomes (``listOutcomes`` after a
cursor) for the gateway's inbound adapter (``gateway/inbound/oversight.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from contracts.envelope import EnvelopeError
from contracts.events.meeting import DecisionTransmissionRequested
from gateway.connectors.base import (
    ConnectorContext,
    Delivery,
    DeliveryResult,
    TargetUrl,
    attempt_seconds_for,
    register_connector,
    settings_of,
)
from gateway.connectors.soap import SignedSoapClient, SigningSettings, signing_files
from gateway.errors import (
    PermanentDeliveryError,
    RetryableDeliveryError,
    translate_transport_errors,
)
from kernel.settings import REPOSITORY_ROOT

log = logging.getLogger(__name__)
TYPE_NAME = "oversight_soap"
TARGET = "regional oversight (tutelle) SOAP"
DEFAULT_WSDL = REPOSITORY_ROOT / "contracts" / "oversight" / "tutelle.wsdl"
BINDING = "{urn:hub:modelled:wallonie:tutelle:1}TutelleSOAPBinding"
TRANSMIT = "transmitDecision"
LIST_OUTCOMES = "listOutcomes"
MAX_OUTCOMES_PER_CALL = 500  # the contract's limit


class OversightSoapSettings(SigningSettings):
    type: Literal["oversight_soap"]
    endpoint: TargetUrl
    #: Defaults to the modelled contract of this repository.
    wsdl: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    #: Outcomes asked for per ``listOutcomes`` call.
    outcomes_per_call: int = Field(default=100, ge=1, le=MAX_OUTCOMES_PER_CALL)


@dataclass(frozen=True)
class Outcome:
    """One outcome of the oversight, as ``listOutcomes`` gives it."""

    cursor: int
    acknowledgement_number: str
    item_id: str
    decision_number: str
    outcome: Literal["approved", "annulled", "no_objection"]
    #: None when the answer has none that zeep reads (absent, or no date: "2026-13-45").
    decided_on: date | None
    reason: str | None
    #: Why the entry cannot be taken as listed (its cursor unreadable), or None.
    problem: str | None = None


class OversightSoapConnector:
    type_name = TYPE_NAME

    def __init__(self, ctx: ConnectorContext, settings: OversightSoapSettings) -> None:
        self.settings = settings
        self.attempt_seconds = attempt_seconds_for(settings.timeout_seconds)
        self.tenant = ctx.tenant
        identity = signing_files(ctx, settings, TYPE_NAME)
        self.certificate = identity.certificate
        self._soap = SignedSoapClient(
            wsdl=str(settings.wsdl or DEFAULT_WSDL),
            binding=BINDING,
            endpoint=settings.endpoint,
            http=ctx.http,
            timeout_seconds=settings.timeout_seconds,
            identity=identity,
        )

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        try:
            decision = delivery.event.data_as(DecisionTransmissionRequested)
        except EnvelopeError as exc:
            raise PermanentDeliveryError(
                f"{TARGET} delivers {DecisionTransmissionRequested.TYPE} only,"
                f" not {delivery.event.type}"
            ) from exc
        headers = {**delivery.trace_headers, "Idempotency-Key": delivery.idempotency_key}
        with translate_transport_errors(TARGET):
            answer = await self._soap.call(
                TRANSMIT, headers, **transmission_request(delivery.tenant, decision)
            )
        number = getattr(answer, "AcknowledgementNumber", None)
        if not number:
            # It may have been received: a retry under the same ItemId is answered, not re-filed.
            raise RetryableDeliveryError(f"{TARGET} answered without an acknowledgement number")
        return DeliveryResult(external_reference=str(number))

    async def list_outcomes(self, since: int) -> tuple[list[Outcome], int]:
        """The tenant's outcomes after the cursor ``since``, and the cursor to ask from next.

        Raises what ``translate_transport_errors`` raises: the caller tries again later.
        """
        with translate_transport_errors(TARGET):
            answer = await self._soap.call(
                LIST_OUTCOMES,
                {},
                CommuneNis=self.tenant,
                Since=since,
                MaxCount=self.settings.outcomes_per_call,
            )
        # zeep reads a cursor that is no integer as None. ``int(None)`` failed the whole
        # page, at every poll, and the tenant's later outcomes were never read. Such an
        # entry is given the cursor before it (outcomes come in cursor order): it is
        # recorded refused, shown, and a restart resuming from it reads it again (found
        # recorded) rather than skip an outcome. An unreadable next cursor is the page's
        # last readable one.
        outcomes, last = [], since
        for entry in answer.Outcome or []:
            cursor = _cursor(entry.Cursor)
            unreadable = "the service gave it no readable Cursor" if cursor is None else None
            outcomes.append(
                Outcome(
                    cursor=last if cursor is None else cursor,
                    acknowledgement_number=str(entry.AcknowledgementNumber),
                    item_id=str(entry.ItemId),
                    decision_number=str(entry.DecisionNumber),
                    outcome=entry.Outcome,
                    decided_on=entry.DecidedOn,
                    reason=entry.Reason,
                    problem=unreadable,
                )
            )
            last = last if cursor is None else max(last, cursor)
        next_cursor = _cursor(answer.NextCursor)
        if next_cursor is None:
            log.error(
                "%s gave tenant %s's outcomes no NextCursor after %d", TARGET, self.tenant, since
            )
        return outcomes, last if next_cursor is None else next_cursor

    async def aclose(self) -> None:
        await self._soap.aclose()


def _cursor(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def transmission_request(tenant: str, decision: DecisionTransmissionRequested) -> dict[str, Any]:
    """The contract's ``TransmitDecisionRequest`` for a decision of ``tenant``."""
    return {
        "CommuneNis": tenant,
        "ItemId": decision.item_id,
        "DecisionNumber": decision.decision_number,
        "Meeting": {"Date": decision.meeting_date, "Kind": decision.meeting_kind},
        "Category": decision.category,
        "Decision": decision.decision,
        "Title": decision.title,
        "DecisionText": decision.decision_text,
        "Annex": [
            {
                "Reference": annex.annex_id,
                "Title": annex.title,
                "FileName": annex.filename,
                "MediaType": annex.media_type,
                "Md5": annex.md5,
            }
            for annex in decision.annexes
        ],
    }


def _build(ctx: ConnectorContext, raw: dict[str, Any]) -> OversightSoapConnector:
    return OversightSoapConnector(ctx, settings_of(OversightSoapSettings, ctx, raw))


register_connector(TYPE_NAME, _build, event_types=[DecisionTransmissionRequested.TYPE])
