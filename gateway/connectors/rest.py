"""One JSON POST of a delivery to a REST target that answers with the id of what it recorded.

The Peppol access point, NOTICe, the opinions platform and Inforius take a
delivery the same way: one ``POST`` of a JSON body with the hub's API key and
``Idempotency-Key: <delivery key>``, answered by a JSON object whose one field
is the target's id for what it received. ``post_delivery`` makes that call and
turns every way it can go wrong into a ``DeliveryError``, in this order:

- a timeout or an unreachable target: retryable (``translate_transport_errors``);
- 401: retryable: the tenant's API key is wrong, which an operator fixes meanwhile;
- a status the connector gives a meaning of its own (``refusals``, e.g. NOTICe's
  409 for a closed notification): permanent, with the connector's reason;
- any other error status: ``error_for_response``, retryable or not by
  ``gateway.errors.RETRYABLE_STATUS``, with the target's Problem JSON ``detail``
  (or its text) in the reason;
- any other answer without the id: retryable (see below).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from gateway.connectors.base import Delivery, DeliveryResult, json_field
from gateway.errors import (
    PermanentDeliveryError,
    RetryableDeliveryError,
    error_for_response,
    translate_transport_errors,
)

#: The reason a permanent refusal gives, read from the target's answer.
Refusal = Callable[[httpx.Response], str]


async def post_delivery(
    http: httpx.AsyncClient,
    url: str,
    body: Mapping[str, Any],
    *,
    delivery: Delivery,
    target: str,
    api_key_headers: Mapping[str, str],
    timeout: httpx.Timeout,
    reference_field: str,
    refusals: Mapping[int, Refusal] | None = None,
    subject: str | None = None,
) -> DeliveryResult:
    """POST ``body`` to ``url``; the answer's ``reference_field`` is the external reference.

    ``target`` names the target in transport and HTTP errors (``"NOTICe timed
    out"``, ``"HTTP 422: NOTICe: …"``); ``subject`` is how a sentence of ours
    begins with it, where that differs (``"The opinions platform refused…"``).
    Raises ``RetryableDeliveryError`` or ``PermanentDeliveryError``.
    """
    subject = subject or target
    headers = {
        **delivery.trace_headers,
        **api_key_headers,
        "Idempotency-Key": delivery.idempotency_key,
    }
    with translate_transport_errors(target):
        response = await http.post(url, json=body, headers=headers, timeout=timeout)
        if response.status_code == 401:
            # The document is not at fault, the tenant's key is: tried again while an
            # operator fixes it (then dead, and replayed with POST /v1/deliveries/replay).
            raise RetryableDeliveryError(
                f"{subject} refused the hub's API key; check this tenant's api_key"
            )
        if refusals and response.status_code in refusals:
            raise PermanentDeliveryError(refusals[response.status_code](response))
        if response.is_error:
            raise error_for_response(target, response)
        reference = json_field(response, reference_field)
        if not isinstance(reference, str) or not reference:
            # It may have been recorded: retrying under the same idempotency key is safe.
            raise RetryableDeliveryError(f"{subject} answered with no {reference_field}")
        return DeliveryResult(external_reference=reference)
