"""Delivery errors, and the one seam where transport errors become ours.

    DeliveryError
     ├── RetryableDeliveryError   try again later (timeouts, 5xx, 429, connection refused)
     └── PermanentDeliveryError   never succeeds as sent (4xx, SOAP business faults,
                                  e.g. NO_DIGITAL_USER); recorded as failed

Connectors call ``translate_transport_errors()`` around their I/O; httpx
errors and zeep faults are re-raised as one of the two, ``from`` the original.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from zeep.exceptions import Fault, TransportError
from zeep.exceptions import ValidationError as ZeepValidationError


class DeliveryError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryableDeliveryError(DeliveryError):
    pass


class PermanentDeliveryError(DeliveryError):
    pass


RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def error_for_status(status: int, reason: str) -> DeliveryError:
    if status in RETRYABLE_STATUS:
        return RetryableDeliveryError(f"HTTP {status}: {reason}")
    return PermanentDeliveryError(f"HTTP {status}: {reason}")


def error_for_response(target: str, response: httpx.Response) -> DeliveryError:
    """The error of a refused request, with the target's own explanation when it gives one.

    Problem JSON (RFC 9457) gives ``detail``; other JSON errors often ``message``.
    """
    explanation = response.text[:300]
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for name in ("detail", "message", "title"):
            if isinstance(body.get(name), str) and body[name]:
                explanation = body[name][:500]
                break
    return error_for_status(response.status_code, f"{target}: {explanation}")


@contextmanager
def translate_transport_errors(target: str) -> Iterator[None]:
    try:
        yield
    except DeliveryError:
        raise
    except httpx.TimeoutException as exc:
        raise RetryableDeliveryError(f"{target} timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise RetryableDeliveryError(f"{target} unreachable: {exc}") from exc
    except httpx.HTTPStatusError as exc:
        raise error_for_status(exc.response.status_code, exc.response.text[:300]) from exc
    except TransportError as exc:  # zeep: the HTTP layer answered with an error status
        raise error_for_status(exc.status_code, str(exc.message)[:300]) from exc
    except Fault as exc:
        # A SOAP server fault (soap:Server) may pass; a client fault or business fault will not.
        code = str(exc.code or "")
        if code.endswith("Server") and "Business" not in str(exc.message):
            raise RetryableDeliveryError(f"{target} SOAP fault {code}: {exc.message}") from exc
        raise PermanentDeliveryError(f"{target} SOAP fault {code}: {exc.message}") from exc
    except ZeepValidationError as exc:
        raise PermanentDeliveryError(f"{target}: the message does not fit the WSDL: {exc}") from exc
