"""The rules of the invoice workflow, without I/O.

- An invoice moves ``received → validated → to_approve → approved → booked →
  paid``; a clerk may dispute it while it waits for approval (``to_approve →
  disputed``) and approve it once the supplier clarified (``disputed →
  approved``). A document that fails its checks goes ``received → rejected``
  and stays there, stored with its reasons. A scanned paper invoice starts in
  ``to_encode`` and joins the flow (``to_encode → received``) when a clerk
  uploads its UBL encoding.
- ``booked`` follows the accounting connector's receipt, never a clerk. An
  approved invoice the accounting software did not book (``booking_failure``:
  a supplier it does not know yet…) may be approved again once the cause is
  fixed: a new hand-over, under a new event and so a new idempotency key.
- Each step may answer the supplier (Peppol Invoice Response): AB on
  reception, RE on rejection, IP when sent for approval, UQ when disputed, AP
  when approved, PD when paid. Scans get no answer: they came on paper.
- Duplicates: one supplier (VAT id, else legal registration, else name) and
  one number make one document per tenant, whatever its issue date and
  whether it is an invoice or a credit note, as the accounting software books
  them.
- The service that approves an invoice follows the tenant's routes on the
  buyer reference (BT-10) and the order reference (BT-13), else its default.

Rule violations are ``ProblemError`` subclasses: the API shows them as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

from contracts.events.factures import ResponseStatus
from contracts.events.gateway import DeliveryReceipt
from contracts.events.peppol import PeppolEndpoint
from kernel.days import commune_day
from kernel.errors import Conflict, ProblemError
from kernel.tenants import Tenant, TenantConfigError

#: Where invoices go for approval when the tenant names no default service.
FALLBACK_SERVICE = "finances"


class InvoiceState(StrEnum):
    TO_ENCODE = "to_encode"
    RECEIVED = "received"
    VALIDATED = "validated"
    REJECTED = "rejected"
    TO_APPROVE = "to_approve"
    APPROVED = "approved"
    DISPUTED = "disputed"
    BOOKED = "booked"
    PAID = "paid"


class Step(StrEnum):
    ENCODE = "encode"
    VALIDATE = "validate"
    REJECT = "reject"
    REQUEST_APPROVAL = "request approval"
    APPROVE = "approve"
    DISPUTE = "dispute"
    BOOK = "book"
    PAY = "pay"


TRANSITIONS: Mapping[tuple[InvoiceState, Step], InvoiceState] = {
    (InvoiceState.TO_ENCODE, Step.ENCODE): InvoiceState.RECEIVED,
    (InvoiceState.RECEIVED, Step.VALIDATE): InvoiceState.VALIDATED,
    (InvoiceState.RECEIVED, Step.REJECT): InvoiceState.REJECTED,
    (InvoiceState.VALIDATED, Step.REQUEST_APPROVAL): InvoiceState.TO_APPROVE,
    (InvoiceState.TO_APPROVE, Step.APPROVE): InvoiceState.APPROVED,
    (InvoiceState.DISPUTED, Step.APPROVE): InvoiceState.APPROVED,
    (InvoiceState.TO_APPROVE, Step.DISPUTE): InvoiceState.DISPUTED,
    (InvoiceState.APPROVED, Step.BOOK): InvoiceState.BOOKED,
    (InvoiceState.BOOKED, Step.PAY): InvoiceState.PAID,
}

#: The answer each step sends to the supplier (when the invoice has a Peppol sender).
RESPONSE_AFTER: Mapping[Step, ResponseStatus] = {
    Step.REJECT: "RE",
    Step.REQUEST_APPROVAL: "IP",
    Step.DISPUTE: "UQ",
    Step.APPROVE: "AP",
    Step.PAY: "PD",
}
#: Sent when a document arrives, before any check.
RECEPTION_RESPONSE: ResponseStatus = "AB"


class InvalidTransition(Conflict):
    def __init__(self, label: str, state: InvoiceState, step: Step) -> None:
        allowed = sorted(str(source) for source, action in TRANSITIONS if action is step)
        super().__init__(
            "invalid-invoice-state",
            f"Invoice {label} is {state}: it cannot {step} now (only from: {', '.join(allowed)}).",
            state=str(state),
            allowed_from=allowed,
        )


class ConcurrentChange(Conflict):
    def __init__(self, label: str, step: Step) -> None:
        super().__init__(
            "concurrent-invoice-change",
            f"Invoice {label} was changed by someone else while you tried to {step} it; "
            "reload it and try again.",
        )


def advance(state: InvoiceState, step: Step, label: str) -> InvoiceState:
    """The state after ``step``, or ``InvalidTransition`` naming the current state."""
    after = TRANSITIONS.get((state, step))
    if after is None:
        raise InvalidTransition(label, state, step)
    return after


def approval_after(state: InvoiceState, booking_failure: str | None, label: str) -> InvoiceState:
    """The state an approval leads to, from ``state``; or ``InvalidTransition``.

    Approved again only after a failed booking: its hand-over to the accounting software
    is final (a replay finds the same refusal), and the invoice stayed ``approved`` for
    good, neither booked nor open to a clerk. While a booking is under way, a second
    approval would hand the invoice over twice.
    """
    if state is InvoiceState.APPROVED and booking_failure is not None:
        return InvoiceState.APPROVED
    return advance(state, Step.APPROVE, label)


# -- what the supplier is told -----------------------------------------------------------


def answers_supplier(channel: str, supplier_endpoint: PeppolEndpoint | None) -> bool:
    """Invoice Responses go over Peppol: only to a supplier with an endpoint, never for scans."""
    return channel != "scan" and supplier_endpoint is not None


def parse_endpoint(value: str | None) -> PeppolEndpoint | None:
    """``"0208:0216987614"`` (as the tenant files and the database write it) as an endpoint."""
    if not value or ":" not in value:
        return None
    scheme, _, identifier = value.partition(":")
    return PeppolEndpoint(scheme=scheme, identifier=identifier)


def format_endpoint(endpoint: PeppolEndpoint | None) -> str | None:
    return None if endpoint is None else f"{endpoint.scheme}:{endpoint.identifier}"


def same_endpoint(left: PeppolEndpoint, right: PeppolEndpoint) -> bool:
    """Peppol identifiers compare case-insensitively (the SML lower-cases them)."""
    return (
        left.scheme == right.scheme
        and left.identifier.strip().lower() == right.identifier.strip().lower()
    )


def tenant_endpoint(tenant: Tenant) -> PeppolEndpoint | None:
    peppol = tenant.raw.get("peppol")
    participant = peppol.get("participant") if isinstance(peppol, dict) else None
    return parse_endpoint(str(participant)) if participant else None


# -- whose invoice it is -----------------------------------------------------------------


class InvoiceForAnotherBuyer(ProblemError):
    def __init__(self, buyer: PeppolEndpoint, own: PeppolEndpoint | None, other: str) -> None:
        mine = format_endpoint(own) or "no Peppol participant"
        super().__init__(
            422,
            "invoice-for-another-buyer",
            "This invoice is addressed to another buyer",
            f"The invoice's buyer endpoint (BT-49) is {format_endpoint(buyer)}, the Peppol "
            f"participant of tenant {other}, not yours ({mine}); nothing was stored. "
            "Upload it with an account of that tenant.",
            buyer_endpoint=format_endpoint(buyer),
        )


class InvoiceForUnknownBuyer(ProblemError):
    def __init__(self, buyer: PeppolEndpoint, own: PeppolEndpoint | None) -> None:
        mine = format_endpoint(own) or "no Peppol participant"
        super().__init__(
            422,
            "invoice-for-unknown-buyer",
            "This invoice is addressed to a buyer this hub does not serve",
            f"The invoice's buyer endpoint (BT-49) is {format_endpoint(buyer)}, which is no "
            f"tenant of this hub (yours is {mine}); nothing was stored. Ask the supplier to "
            "address the invoice to the commune's Peppol participant.",
            buyer_endpoint=format_endpoint(buyer),
        )


def check_buyer(buyer: PeppolEndpoint | None, tenant: str, tenants: Mapping[str, Tenant]) -> None:
    """An invoice belongs to the tenant of its buyer endpoint; one without BT-49 to the caller."""
    if buyer is None:
        return
    own = tenant_endpoint(tenants[tenant]) if tenant in tenants else None
    if own is not None and same_endpoint(buyer, own):
        return
    for code, other in tenants.items():
        endpoint = tenant_endpoint(other)
        if code != tenant and endpoint is not None and same_endpoint(buyer, endpoint):
            raise InvoiceForAnotherBuyer(buyer, own, code)
    raise InvoiceForUnknownBuyer(buyer, own)


# -- duplicates and credit notes ---------------------------------------------------------

_NOT_ALNUM = re.compile(r"[^0-9A-Z]")


def _squeezed(value: str) -> str:
    return _NOT_ALNUM.sub("", value.upper())


def supplier_key(vat_id: str | None, legal_id: str | None, name: str | None) -> str | None:
    """Who the supplier is, as stably as the invoice allows: VAT id, legal id, else name."""
    for prefix, value in (("vat", vat_id), ("legal", legal_id), ("name", name)):
        squeezed = _squeezed(value or "")
        if squeezed:
            return f"{prefix}:{squeezed}"
    return None


def duplicate_key(supplier: str | None, number: str | None) -> str | None:
    """One document per supplier and number; None when either is unknown.

    The accounting software books a supplier's number once, whatever its issue date or
    kind (Stésud and Inforius refuse the second with ``DUPLICATE_INVOICE``). Keyed with
    the issue date, or credit notes apart, a second copy was accepted here, approved
    (the supplier told AP), then refused by the accounting software for good.
    """
    if not supplier or not number or not number.strip():
        return None
    return f"{supplier}|{normalised_number(number)}"


def normalised_number(number: str) -> str:
    """A document's number as the hub compares it: case and surrounding spaces aside."""
    return number.strip().upper()


class CreditNoteNotPayable(Conflict):
    def __init__(self, label: str) -> None:
        super().__init__(
            "credit-note-not-payable",
            f"Credit note {label} is money the supplier owes the commune: it is settled"
            " against an invoice in the accounting software, not paid (no PD is sent).",
        )


class NothingToPay(Conflict):
    def __init__(self, label: str, amount_due: Decimal) -> None:
        super().__init__(
            "nothing-to-pay",
            f"Invoice {label} asks for no money: its amount due (BT-115) is {amount_due}. A"
            " negative amount is money the supplier owes the commune: it is settled against"
            " another invoice in the accounting software, not paid (no PD is sent).",
            amount_due=str(amount_due),
        )


# -- approval routing --------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalRoute:
    """Invoices whose buyer or order reference matches the glob (case-insensitive) go to service."""

    service: str
    buyer_reference: str | None = None
    order_reference: str | None = None

    def matches(self, buyer_reference: str | None, order_reference: str | None) -> bool:
        return any(
            pattern is not None
            and value is not None
            and fnmatchcase(value.strip().upper(), pattern.upper())
            for pattern, value in (
                (self.buyer_reference, buyer_reference),
                (self.order_reference, order_reference),
            )
        )


@dataclass(frozen=True)
class ApprovalRouting:
    default_service: str = FALLBACK_SERVICE
    routes: tuple[ApprovalRoute, ...] = ()

    def service_for(self, buyer_reference: str | None, order_reference: str | None) -> str:
        for route in self.routes:
            if route.matches(buyer_reference, order_reference):
                return route.service
        return self.default_service


def approval_routing(tenant: Tenant) -> ApprovalRouting:
    """The tenant file's ``services: factures:`` block (absent: everything to the fallback)."""
    services = tenant.raw.get("services") or {}
    block: Any = services.get("factures") if isinstance(services, dict) else None
    if block is None:
        return ApprovalRouting()
    where = f"{tenant.source_file}: services.factures"
    if not isinstance(block, dict):
        raise TenantConfigError(f"{where} must be a mapping")
    default = block.get("default_service", FALLBACK_SERVICE)
    if not isinstance(default, str) or not default:
        raise TenantConfigError(f"{where}.default_service must be a service name")
    routes: list[ApprovalRoute] = []
    for index, raw in enumerate(block.get("approval_routes") or []):
        place = f"{where}.approval_routes[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("service"), str):
            raise TenantConfigError(f"{place} needs a 'service'")
        unknown = set(raw) - {"service", "buyer_reference", "order_reference"}
        if unknown:
            raise TenantConfigError(f"{place}: unknown keys {sorted(unknown)}")
        if raw.get("buyer_reference") is None and raw.get("order_reference") is None:
            raise TenantConfigError(f"{place} needs a buyer_reference or order_reference pattern")
        routes.append(
            ApprovalRoute(
                service=raw["service"],
                buyer_reference=_optional_text(raw.get("buyer_reference")),
                order_reference=_optional_text(raw.get("order_reference")),
            )
        )
    return ApprovalRouting(default, tuple(routes))


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


# -- booking -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Booked:
    accounting_reference: str
    connector: str


@dataclass(frozen=True)
class NotBooked:
    reason: str


BookingOutcome = Booked | NotBooked


def booking_outcome(receipt: DeliveryReceipt) -> BookingOutcome:
    """What the accounting connector's receipt for an approved invoice says."""
    if receipt.outcome == "delivered":
        # A connector that books without returning a reference still booked it.
        return Booked(receipt.external_reference or "(no reference given)", receipt.connector)
    reason = receipt.reason or "no reason given"
    if receipt.outcome == "dead":
        return NotBooked(
            f"the accounting software gave no answer after {receipt.attempts} attempts: {reason}"
        )
    return NotBooked(f"the accounting software refused it: {reason}")


# -- payment -----------------------------------------------------------------------------


class PaidInTheFuture(ProblemError):
    def __init__(self, paid_on: date, today: date) -> None:
        super().__init__(
            422,
            "paid-in-the-future",
            "Payment date in the future",
            f"paid_on {paid_on.isoformat()} is after today ({today.isoformat()}); "
            "record a payment once it is made.",
        )


def check_paid_on(paid_on: date, now: datetime) -> None:
    today = commune_day(now)  # the commune's day, not UTC's
    if paid_on > today:
        raise PaidInTheFuture(paid_on, today)
