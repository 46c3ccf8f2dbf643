"""Connector to the communes' Peppol access point: sends their Invoice Responses.

One ``factures.invoice_response.requested.v1`` event becomes one ``POST
{base_url}/outbox`` of the modelled access point contract
(``contracts/peppol-ap/openapi.yaml``): the UBL ApplicationResponse (BIS
Invoice Response 3.0) with its sender (the commune) and receiver (the
supplier). The AP's ``messageId`` is the delivery's external reference.

The same settings (base URL and API key of the hub's AP account) are read by
the inbound adapter (``gateway/inbound/peppol.py``), which polls that
account's inbox: one connector block per tenant names the access point both
ways.

Each request carries ``Idempotency-Key: <delivery key>``, so a retry after a
lost answer gets the first answer instead of a second response to the
supplier.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
import pybase64
from pydantic import Field, SecretStr

from contracts.envelope import EnvelopeError
from contracts.events.factures import InvoiceResponseRequested
from contracts.events.peppol import PeppolEndpoint
from gateway.connectors.base import (
    ConnectorContext,
    ConnectorSettings,
    Delivery,
    DeliveryResult,
    TargetUrl,
    attempt_seconds_for,
    register_connector,
    settings_of,
)
from gateway.connectors.rest import post_delivery
from gateway.errors import PermanentDeliveryError

TYPE_NAME = "peppol_ap"
TARGET = "Peppol access point"
INVOICE_RESPONSE_DOCUMENT_TYPE = (
    "urn:oasis:names:specification:ubl:schema:xsd:ApplicationResponse-2::ApplicationResponse##"
    "urn:fdc:peppol.eu:poacc:trns:invoice_response:3::2.1"
)
INVOICE_RESPONSE_PROCESS = "urn:fdc:peppol.eu:poacc:bis:invoice_response:3"


class PeppolApSettings(ConnectorSettings):
    type: Literal["peppol_ap"]
    #: The AP API root (``/outbox`` and ``/inbox`` are appended).
    base_url: TargetUrl
    #: The hub's account key at the AP (sent as ``X-Api-Key``).
    api_key: SecretStr
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)

    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key.get_secret_value()}

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


def participant(endpoint: PeppolEndpoint) -> str:
    return f"{endpoint.scheme}:{endpoint.identifier}"


class PeppolApConnector:
    type_name = TYPE_NAME

    def __init__(self, settings: PeppolApSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.attempt_seconds = attempt_seconds_for(settings.timeout_seconds)
        self._http = http
        self._timeout = httpx.Timeout(settings.timeout_seconds)

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        try:
            answer: InvoiceResponseRequested = delivery.event.data_as(InvoiceResponseRequested)
        except EnvelopeError as exc:
            raise PermanentDeliveryError(
                f"{TARGET} delivers {InvoiceResponseRequested.TYPE} only, not {delivery.event.type}"
            ) from exc
        try:
            pybase64.b64decode(answer.application_response_base64, validate=True)
        except ValueError as exc:  # binascii.Error, or text that is not ASCII
            raise PermanentDeliveryError("The Invoice Response is not valid base64.") from exc
        body = {
            "sender": participant(answer.sender),
            "receiver": participant(answer.receiver),
            "documentTypeId": INVOICE_RESPONSE_DOCUMENT_TYPE,
            "processId": INVOICE_RESPONSE_PROCESS,
            "document": answer.application_response_base64,
        }
        return await post_delivery(
            self._http,
            self.settings.url("/outbox"),
            body,
            delivery=delivery,
            target=TARGET,
            api_key_headers=self.settings.headers(),
            timeout=self._timeout,
            reference_field="messageId",
        )

    async def aclose(self) -> None:
        pass  # the HTTP client is shared; the gateway closes it


def create_connector(context: ConnectorContext, config: dict[str, Any]) -> PeppolApConnector:
    return PeppolApConnector(settings_of(PeppolApSettings, context, config), context.http)


register_connector(TYPE_NAME, create_connector, event_types=[InvoiceResponseRequested.TYPE])
