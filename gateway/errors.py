"""Delivery errors, and the one seam where transport errors become ours.

    DeliveryError
     ├── RetryableDeliveryError   try again later (timeouts, connection refused, the HTTP
     │                            statuses of RETRYABLE_STATUS: 401, 408, 425, 429, 500,
     │                            502, 503, 504; SOAP system faults, a refused WS-Security
     │                            signature)
     └── PermanentDeliveryError   never succeeds as sent (every other HTTP status, a 501 or
                                  507 as much as a 404; SOAP business faults, e.g.
                                  NO_DIGITAL_USER); recorded as failed

Connectors call ``translate_transport_errors()`` around their I/O; httpx
errors and zeep faults are re-raised as one of the two, ``from`` the original.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from lxml import etree
from zeep.exceptions import DTDForbidden, EntitiesForbidden, Fault, TransportError, XMLSyntaxError
from zeep.exceptions import ValidationError as ZeepValidationError

from gateway.http import ResponseTooLarge, UndecodableResponse
from kernel.logs import mask_national_numbers


class DeliveryError(Exception):
    def __init__(self, reason: str) -> None:
        # Masked here, once for every connector: a target's error often quotes the request
        # (a SOAP fault naming the NISS it could not find), and the reason goes to the
        # delivery log, the receipt, the service's document and the operators' API.
        reason = mask_national_numbers(reason)
        super().__init__(reason)
        self.reason = reason


class RetryableDeliveryError(DeliveryError):
    def __init__(self, reason: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(reason)
        #: How long the target asked to be left alone (its Retry-After), if it said.
        self.retry_after_seconds = retry_after_seconds


class PermanentDeliveryError(DeliveryError):
    pass


#: 401 among them: the document is not at fault, the tenant's credentials are, which an
#: operator fixes meanwhile (a key rotated at the target, a secret mistyped).
RETRYABLE_STATUS = frozenset({401, 408, 425, 429, 500, 502, 503, 504})


#: The longest Retry-After the gateway honours: a target asking for more is tried again
#: after a day all the same (its later answers may say otherwise).
LONGEST_RETRY_AFTER_SECONDS = 86_400.0


def error_for_status(
    status: int, reason: str, headers: httpx.Headers | None = None
) -> DeliveryError:
    if status in RETRYABLE_STATUS:
        wait = retry_after_seconds(headers.get("retry-after")) if headers is not None else None
        return RetryableDeliveryError(f"HTTP {status}: {reason}", wait)
    return PermanentDeliveryError(f"HTTP {status}: {reason}")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header's wait (RFC 9110 10.2.3: seconds, or an HTTP date); None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            return None
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), LONGEST_RETRY_AFTER_SECONDS)


def error_for_response(target: str, response: httpx.Response) -> DeliveryError:
    """The error of a refused request, with the target's own explanation when it gives one.

    Problem JSON (RFC 9457) gives ``detail``; other JSON errors often ``message``.
    """
    explanation = response.text[:300]
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to read
        body = None
    if isinstance(body, dict):
        for name in ("detail", "message", "title"):
            if isinstance(body.get(name), str) and body[name]:
                explanation = body[name][:500]
                break
    return error_for_status(response.status_code, f"{target}: {explanation}", response.headers)


@contextmanager
def translate_transport_errors(target: str) -> Iterator[None]:
    try:
        yield
    except DeliveryError:
        raise
    except ResponseTooLarge as exc:
        reason = f"{target} answered with too much: {exc}"
        if exc.status < 400:
            # The answer itself, too long to read: whether the target took the request is
            # unknown; sent again under its idempotency key, it is once.
            raise RetryableDeliveryError(reason) from exc
        # An error page too long to read is still the target's answer: a refusal stays one.
        raise error_for_status(exc.status, reason) from exc
    except UndecodableResponse as exc:
        reason = f"{target} answered in an encoding it did not use: {exc}"
        if exc.status < 400:
            # The answer itself, unreadable: whether the target took the request is unknown;
            # sent again under its idempotency key, it is once.
            raise RetryableDeliveryError(reason) from exc
        # A refusal's error page that cannot be read is a refusal all the same.
        raise error_for_status(exc.status, reason, exc.headers) from exc
    except httpx.DecodingError as exc:
        # Decoded by httpx itself (a streamed answer, a client not the gateway's): no status
        # at hand, so whether the target took the request is unknown.
        raise RetryableDeliveryError(
            f"{target} answered in an encoding it did not use: {exc}"
        ) from exc
    except httpx.TimeoutException as exc:
        raise RetryableDeliveryError(f"{target} timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise RetryableDeliveryError(f"{target} unreachable: {exc}") from exc
    except httpx.HTTPStatusError as exc:
        raise error_for_status(
            exc.response.status_code, exc.response.text[:300], exc.response.headers
        ) from exc
    except TransportError as exc:
        # zeep: an error status, or (200) an answer that is no XML at all, an answer cut
        # short: whether the target took the request is unknown; sent again under its
        # idempotency key, it is once. (A 202 or a redirect stays what its status says.)
        if exc.status_code == 200:
            raise RetryableDeliveryError(
                f"{target} answered with no SOAP message: {str(exc.message)[:300]}"
            ) from exc
        raise error_for_status(exc.status_code, str(exc.message)[:300]) from exc
    except Fault as exc:
        raise _fault_error(target, exc) from exc
    except (XMLSyntaxError, DTDForbidden, EntitiesForbidden) as exc:
        # Not a SOAP message: a proxy's error page, an answer cut short. Whether the target
        # took the request is unknown; sent again under its idempotency key, it is once.
        raise RetryableDeliveryError(
            f"{target} answered with no SOAP message ({type(exc).__name__})"
        ) from exc
    except ZeepValidationError as exc:
        raise PermanentDeliveryError(f"{target}: the message does not fit the WSDL: {exc}") from exc


#: The error detail of the federal SOA platform's faults (``socsec-errors-schema-v1``, the
#: e-Box contract's ``err:BusinessError`` and ``err:SystemError``): the service's own word
#: on who erred (``Origin``) and whether the same request may pass later (``Retry``).
SOCSEC_ERRORS_NS = "http://socialsecurity.be/errors/v1"

#: WS-Security 1.0's fault codes (§12; ``wsse:``) and ``wsu:MessageExpired``: the target
#: refused the message's signature, token or timestamp, not the document.
WS_SECURITY_FAULTS = frozenset(
    {
        "UnsupportedSecurityToken",
        "UnsupportedAlgorithm",
        "InvalidSecurity",
        "InvalidSecurityToken",
        "FailedAuthentication",
        "FailedCheck",
        "SecurityTokenUnavailable",
        "MessageExpired",
    }
)

#: A fault that says the signing certificate was refused, in words (the hub's sandboxes,
#: services that answer ``soap:Client`` rather than a ``wsse:`` code).
_REFUSED_CERTIFICATE = re.compile(
    r"certificate\b.*\b(?:not (?:valid|trusted)|untrusted|expired|revoked)",
    re.IGNORECASE | re.DOTALL,
)


def socsec_error(fault: Fault) -> etree._Element | None:
    """The fault's ``BusinessError`` or ``SystemError`` detail, if it carries one."""
    detail = fault.detail
    # zeep's "Unknown fault" (XML that is no Fault) carries the answer as text.
    if not isinstance(detail, etree._Element):
        return None
    return next(
        detail.iter(f"{{{SOCSEC_ERRORS_NS}}}BusinessError", f"{{{SOCSEC_ERRORS_NS}}}SystemError"),
        None,
    )


def _fault_error(target: str, fault: Fault) -> DeliveryError:
    """The contract's error detail decides when the fault has one: its ``Retry``, else a
    ``SystemError`` may pass and a ``BusinessError`` will not. A refused WS-Security (the
    tenant's certificate, the host's clock) may pass once an operator fixes it, as a REST
    target's 401 does. Otherwise a server's fault (SOAP 1.1 ``Server``, ``Server.Busy``…;
    SOAP 1.2 ``Receiver``) may pass, and so may a fault without a code (zeep's "Unknown
    fault" for XML that is no Fault: the server did not speak SOAP); a client's will not."""
    code = str(fault.code or "")
    local = code.rpartition("}")[2].rpartition(":")[2]
    reason = f"{target} SOAP fault {code or '(no code)'}: {fault.message}"
    error = socsec_error(fault)
    if error is not None:
        kind = etree.QName(error).localname
        ns = {"err": SOCSEC_ERRORS_NS}
        reason += (
            f" ({kind} {(error.findtext('err:Code', namespaces=ns) or '?').strip()},"
            f" origin {(error.findtext('err:Origin', namespaces=ns) or '?').strip()})"
        )
        # xs:boolean: "true", "false", "1" or "0"; anything else leaves it to the kind.
        retry = (error.findtext("err:Retry", namespaces=ns) or "").strip()
        if retry in ("true", "1") or (retry not in ("false", "0") and kind == "SystemError"):
            return RetryableDeliveryError(reason)
        return PermanentDeliveryError(reason)
    # SOAP 1.2 carries WS-Security's code as a subcode of env:Sender; 1.1 as the faultcode
    # itself, its prefix unresolved by zeep, so the name alone tells.
    subcodes = [etree.QName(subcode).localname for subcode in fault.subcodes or () if subcode]
    said = str(fault.message or "")[:1000]  # the words that matter come first
    if {local, *subcodes} & WS_SECURITY_FAULTS or _REFUSED_CERTIFICATE.search(said):
        # Not the document's fault: every message of the tenant would be refused alike until
        # an operator renews the certificate or sets the clock; failing them for good would
        # tell the services their letters failed.
        return RetryableDeliveryError(
            f"{reason}; the target refused the message's WS-Security: check the tenant's"
            " signing certificate (expired, renewed, not registered with the target) and"
            " this host's clock"
        )
    if not code or local.partition(".")[0] in ("Server", "Receiver"):
        return RetryableDeliveryError(reason)
    return PermanentDeliveryError(reason)
