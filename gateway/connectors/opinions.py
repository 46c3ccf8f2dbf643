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
    json_field,
    register_connector,
    settings_of,
)
from gateway.errors import (
    PermanentDeliveryError,
    RetryableDeliveryError,
    error_for_response,
    translate_transport_errors,
)

TYPE_NAME = "opinion_rest"
TARGET = "opinions platform"


class OpinionRestSettings(ConnectorSettings):
    type: Literal["opinion_rest"]
    #: The API root (``/requests`` and ``/answers`` are appended).
    base_url: str = Field(pattern=r"^https?://")
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
        headers = {
            **delivery.trace_headers,
            **self.settings.headers(),
            "Idempotency-Key": delivery.idempotency_key,
        }
        with translate_transport_errors(TARGET):
            response = await self._http.post(
                self.settings.url("/requests"), json=body, headers=headers, timeout=self._timeout
            )
            if response.status_code == 401:
                raise PermanentDeliveryError(
                    f"The {TARGET} refused the hub's API key; check this tenant's api_key"
                )
            if response.is_error:
                raise error_for_response(TARGET, response)
            request_id = json_field(response, "requestId")
            if not isinstance(request_id, str) or not request_id:
                raise RetryableDeliveryError(f"The {TARGET} answered with no requestId")
            return DeliveryResult(external_reference=request_id)

    async def aclose(self) -> None:
        pass  # the HTTP client is shared; the gateway closes it


def create_connector(context: ConnectorContext, config: dict[str, Any]) -> OpinionRestConnector:
    return OpinionRestConnector(settings_of(OpinionRestSettings, context, config), context.http)


register_connector(TYPE_NAME, create_connector)
