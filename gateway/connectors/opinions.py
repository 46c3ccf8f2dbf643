"""Connector to the consulted bodies' opinions platform: the communes' requests for opinions.

One ``urban.opinion.requested.v1`` event becomes one ``POST
{base_url}/requests`` of the modelled contract
(``contracts/opinions/openapi.yaml``); the opinion's id is the delivery's
external reference. The answers come back through the inbound adapter
(``gateway/inbound/opinions.py``), which polls the same account.

Each request carries ``Idempotency-Key: <delivery key>``, so a retry after a
lost answer gets the first answer instead of a second request to the body.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr

from contracts.envelope import EnvelopeError
from contracts.events.urban import OpinionRequested
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

TYPE_NAME = "opinion_rest"
TARGET = "opinions platform"


class OpinionRestSettings(ConnectorSettings):
    type: Literal["opinion_rest"]
    #: The API root (``/requests`` and ``/answers`` are appended).
    base_url: TargetUrl
    #: The commune's account key (sent as ``X-Api-Key``).
    api_key: SecretStr
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)

    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key.get_secret_value()}

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


class OpinionRestConnector:
    type_name = TYPE_NAME

    def __init__(self, settings: OpinionRestSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.attempt_seconds = attempt_seconds_for(settings.timeout_seconds)
        self._http = http
        self._timeout = httpx.Timeout(settings.timeout_seconds)

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        try:
            asked: OpinionRequested = delivery.event.data_as(OpinionRequested)
        except EnvelopeError as exc:
            raise PermanentDeliveryError(
                f"The {TARGET} delivers {OpinionRequested.TYPE} only, not {delivery.event.type}"
            ) from exc
        body = {
            "requestId": asked.opinion_id,
            "fileId": asked.file_id,
            "reference": asked.reference,
            "body": asked.body,
            "subject": asked.subject,
            "dueOn": asked.due_on.isoformat(),
        }
        return await post_delivery(
            self._http,
            self.settings.url("/requests"),
            body,
            delivery=delivery,
            target=TARGET,
            # Our sentences begin "The opinions platform…"; HTTP errors say "opinions platform: …".
            subject=f"The {TARGET}",
            api_key_headers=self.settings.headers(),
            timeout=self._timeout,
            reference_field="requestId",
        )

    async def aclose(self) -> None:
        pass  # the HTTP client is shared; the gateway closes it


def create_connector(context: ConnectorContext, config: dict[str, Any]) -> OpinionRestConnector:
    return OpinionRestConnector(settings_of(OpinionRestSettings, context, config), context.http)


register_connector(TYPE_NAME, create_connector, event_types=[OpinionRequested.TYPE])
