"""Connector to the SPW's NOTICe: the commune's responses to permit notifications.

One ``urban.notice.response_requested.v1`` event becomes one ``POST
{base_url}/notifications/{id}/responses`` of the modelled contract
(``contracts/notice/openapi.yaml``): ``PARTIAL`` when the file is complete,
``FINAL`` with the decision (and its PDF), which closes the notification. The
response's ``responseId`` is the delivery's external reference.

The same settings (base URL and API key of the hub's NOTICe account) are read
by the inbound adapter (``gateway/inbound/notice.py``), which polls the
tenant's instance (``notice.instance``) with them.

Each request carries ``Idempotency-Key: <delivery key>``, so a retry after a
lost answer gets the first answer instead of a second response. A response to
a notification already closed by a FINAL one is refused by NOTICe (409): a
permanent failure whose reason says so.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import httpx
from pydantic import Field, SecretStr

from contracts.envelope import EnvelopeError
from contracts.events.urban import NoticeResponseRequested
from contracts.identifiers import NOTICE_INSTANCE_CODE
from gateway.connectors.base import (
    ConnectorContext,
    ConnectorSettings,
    Delivery,
    DeliveryResult,
    TargetUrl,
    attempt_seconds_for,
    json_field,
    register_connector,
    settings_of,
)
from gateway.connectors.rest import post_delivery
from gateway.errors import PermanentDeliveryError
from gateway.inbound.records import path_segment

TYPE_NAME = "notice"
TARGET = "NOTICe"
DECISIONS = {"granted": "GRANTED", "refused": "REFUSED"}


class NoticeSettings(ConnectorSettings):
    type: Literal["notice"]
    #: The API root (``/instances/…`` and ``/notifications/…`` are appended).
    base_url: TargetUrl
    #: The hub's partner account key at NOTICe (sent as ``X-Api-Key``).
    api_key: SecretStr
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    #: Further instance codes polled with this account besides the tenants' own
    #: (e.g. a commune being brought in): their notifications are kept as unroutable,
    #: for an operator, until a tenant file names the instance.
    poll_instances: list[Annotated[str, Field(pattern=f"^{NOTICE_INSTANCE_CODE.pattern}$")]] = (
        Field(default_factory=list)
    )

    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key.get_secret_value()}

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


def response_body(response: NoticeResponseRequested) -> dict[str, Any]:
    """The contract's ``ResponseRequest``, or PermanentDeliveryError when it cannot be one."""
    if response.state == "FINAL" and response.decision is None:
        raise PermanentDeliveryError(
            f"A FINAL response to NOTICe notification {response.notification_id} needs the"
            " decision (granted or refused)."
        )
    if response.state == "PARTIAL" and response.decision is not None:
        raise PermanentDeliveryError(
            f"A PARTIAL response to NOTICe notification {response.notification_id} carries no"
            " decision: send the decision with the FINAL response."
        )
    body: dict[str, Any] = {"state": response.state, "message": response.message}
    if response.decision is not None:
        body["decision"] = DECISIONS[response.decision]
    if response.decision_number:
        body["decisionNumber"] = response.decision_number
    if response.document_base64:
        body["document"] = {
            "filename": f"decision-{response.file_id}.pdf",
            "mediaType": "application/pdf",
            "content": response.document_base64,
        }
    return body


class NoticeConnector:
    type_name = TYPE_NAME

    def __init__(self, settings: NoticeSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.attempt_seconds = attempt_seconds_for(settings.timeout_seconds)
        self._http = http
        self._timeout = httpx.Timeout(settings.timeout_seconds)

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        try:
            response: NoticeResponseRequested = delivery.event.data_as(NoticeResponseRequested)
        except EnvelopeError as exc:
            raise PermanentDeliveryError(
                f"{TARGET} delivers {NoticeResponseRequested.TYPE} only, not {delivery.event.type}"
            ) from exc
        body = response_body(response)

        def already_closed(answer: httpx.Response) -> str:
            # NOTICe's 409: the notification was closed by a FINAL response; it stays closed.
            return (
                f"{TARGET} notification {response.notification_id} is already closed by a"
                f" FINAL response: this {response.state} response was refused"
                f" ({json_field(answer, 'detail') or 'HTTP 409'})"
            )

        return await post_delivery(
            self._http,
            # Quoted: the contract allows any text, and a "/", "?" or ".." would change the path.
            self.settings.url(f"/notifications/{path_segment(response.notification_id)}/responses"),
            body,
            delivery=delivery,
            target=TARGET,
            api_key_headers=self.settings.headers(),
            timeout=self._timeout,
            reference_field="responseId",
            refusals={409: already_closed},
        )

    async def aclose(self) -> None:
        pass  # the HTTP client is shared; the gateway closes it


def create_connector(context: ConnectorContext, config: dict[str, Any]) -> NoticeConnector:
    return NoticeConnector(settings_of(NoticeSettings, context, config), context.http)


register_connector(TYPE_NAME, create_connector, event_types=[NoticeResponseRequested.TYPE])
