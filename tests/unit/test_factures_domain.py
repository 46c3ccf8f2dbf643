"""The invoice workflow's rules, without I/O: states, buyers, duplicates, routing, reasons."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from contracts.events.gateway import DeliveryReceipt
from contracts.events.peppol import PeppolEndpoint
from kernel.errors import ProblemError
from kernel.tenants import Tenant, TenantConfigError
from services.factures import reasons
from services.factures.domain import (
    FALLBACK_SERVICE,
    TRANSITIONS,
    Booked,
    InvalidTransition,
    InvoiceState,
    NotBooked,
    Step,
    advance,
    answers_supplier,
    approval_after,
    approval_routing,
    booking_outcome,
    check_buyer,
    check_paid_on,
    duplicate_key,
    supplier_key,
)
from services.factures.rules.engine import Finding

SAMBREVILLE = PeppolEndpoint(scheme="0208", identifier="0216987614")
LIEGE = PeppolEndpoint(scheme="0208", identifier="0207123407")


def tenant(code: str, participant: str | None, **raw: Any) -> Tenant:
    content: dict[str, Any] = {"tenant": code, "name": f"Commune {code}", **raw}
    if participant:
        content["peppol"] = {"participant": participant}
    return Tenant(code, f"Commune {code}", Path(f"{code}.yaml"), content)


TENANTS = {
    "92137": tenant("92137", "0208:0216987614"),
    "62063": tenant("62063", "0208:0207123407"),
}


# -- the state machine -----------------------------------------------------------------


def test_the_happy_path_goes_from_reception_to_payment() -> None:
    state = InvoiceState.RECEIVED
    for step in (Step.VALIDATE, Step.REQUEST_APPROVAL, Step.APPROVE, Step.BOOK, Step.PAY):
        state = advance(state, step, "F-1")
    assert state is InvoiceState.PAID


def test_a_scan_is_encoded_before_the_usual_flow_and_a_dispute_can_be_settled() -> None:
    assert advance(InvoiceState.TO_ENCODE, Step.ENCODE, "E2026/1") is InvoiceState.RECEIVED
    disputed = advance(InvoiceState.TO_APPROVE, Step.DISPUTE, "F-1")
    assert advance(disputed, Step.APPROVE, "F-1") is InvoiceState.APPROVED


@pytest.mark.parametrize(
    ("state", "step"),
    [
        (InvoiceState.REJECTED, Step.APPROVE),
        (InvoiceState.APPROVED, Step.DISPUTE),
        (InvoiceState.TO_APPROVE, Step.PAY),
        (InvoiceState.APPROVED, Step.PAY),  # paid only once the accounting booked it
        (InvoiceState.PAID, Step.PAY),
        (InvoiceState.TO_ENCODE, Step.APPROVE),
    ],
)
def test_an_illegal_step_is_a_409_naming_the_state(state: InvoiceState, step: Step) -> None:
    with pytest.raises(InvalidTransition) as error:
        advance(state, step, "F-77")
    assert error.value.status == 409
    assert error.value.slug == "invalid-invoice-state"
    assert f"F-77 is {state}" in error.value.detail
    assert error.value.extensions["state"] == str(state)


def test_rejected_and_paid_are_final() -> None:
    finals = {InvoiceState.REJECTED, InvoiceState.PAID}
    assert not [key for key in TRANSITIONS if key[0] in finals]


# -- whom to answer, whose invoice -----------------------------------------------------


def test_only_peppol_and_uploads_with_a_supplier_endpoint_get_answers() -> None:
    assert answers_supplier("peppol", SAMBREVILLE)
    assert answers_supplier("upload", SAMBREVILLE)
    assert not answers_supplier("upload", None)
    assert not answers_supplier("scan", SAMBREVILLE)


def test_an_invoice_for_the_callers_participant_or_without_buyer_endpoint_is_accepted() -> None:
    check_buyer(PeppolEndpoint(scheme="0208", identifier="0216987614 "), "92137", TENANTS)
    check_buyer(None, "92137", TENANTS)


def test_an_invoice_for_another_tenant_or_for_no_tenant_is_refused_specifically() -> None:
    with pytest.raises(ProblemError) as other:
        check_buyer(LIEGE, "92137", TENANTS)
    assert (other.value.status, other.value.slug) == (422, "invoice-for-another-buyer")
    assert "62063" in other.value.detail
    with pytest.raises(ProblemError) as unknown:
        check_buyer(PeppolEndpoint(scheme="0088", identifier="5790000435975"), "92137", TENANTS)
    assert (unknown.value.status, unknown.value.slug) == (422, "invoice-for-unknown-buyer")


# -- duplicates --------------------------------------------------------------------------


def test_the_supplier_is_known_by_vat_id_then_legal_id_then_name_whatever_the_spelling() -> None:
    assert supplier_key("BE 0403.170.701", "0403170701", "X") == "vat:BE0403170701"
    assert supplier_key(None, "0403.170.701", "X") == "legal:0403170701"
    assert supplier_key(None, None, "Dupont s.a.") == supplier_key(None, " ", "DUPONT SA")
    assert supplier_key(None, None, None) is None


def test_an_approved_invoice_is_approved_again_only_after_a_failed_booking() -> None:
    refused = "the accounting software refused it: UNKNOWN_SUPPLIER"
    assert approval_after(InvoiceState.APPROVED, refused, "F-1") is InvoiceState.APPROVED
    assert approval_after(InvoiceState.TO_APPROVE, None, "F-1") is InvoiceState.APPROVED
    with pytest.raises(InvalidTransition):  # its booking is under way
        approval_after(InvoiceState.APPROVED, None, "F-1")
    with pytest.raises(InvalidTransition):
        approval_after(InvoiceState.BOOKED, refused, "F-1")


def test_one_supplier_and_number_make_one_document_whatever_its_date_or_kind() -> None:
    # As the accounting software books them (DUPLICATE_INVOICE: "that supplier's invoice
    # number is already booked"): the issue date and the kind are no part of the key.
    key = duplicate_key("vat:BE0403170701", "f-1 ")
    assert key == duplicate_key("vat:BE0403170701", "F-1")
    assert key != duplicate_key("vat:BE0403170701", "F-2")
    assert key != duplicate_key("vat:BE0202239951", "F-1")
    assert duplicate_key("vat:BE0403170701", None) is None
    assert duplicate_key("vat:BE0403170701", "  ") is None
    assert duplicate_key(None, "F-1") is None


# -- approval routing --------------------------------------------------------------------


def test_the_approving_service_follows_the_buyer_then_order_reference_else_the_default() -> None:
    routing = approval_routing(
        tenant(
            "92137",
            None,
            services={
                "factures": {
                    "default_service": "finances",
                    "approval_routes": [
                        {"buyer_reference": "TRAV-*", "service": "travaux"},
                        {"order_reference": "BC-ENS-*", "service": "enseignement"},
                    ],
                }
            },
        )
    )
    assert routing.service_for("trav-2026-1", None) == "travaux"
    assert routing.service_for("X", "BC-ENS-4") == "enseignement"
    assert routing.service_for("X", None) == "finances"
    assert routing.service_for(None, None) == "finances"


def test_a_tenant_without_invoice_settings_routes_to_the_fallback() -> None:
    assert approval_routing(TENANTS["92137"]).service_for("TRAV-1", None) == FALLBACK_SERVICE


@pytest.mark.parametrize(
    "block",
    [
        "finances",
        {"default_service": ""},
        {"approval_routes": [{"service": "travaux"}]},
        {"approval_routes": [{"buyer_reference": "A*", "service": "x", "typo": 1}]},
    ],
)
def test_a_wrong_invoice_settings_block_names_the_file(block: object) -> None:
    with pytest.raises(TenantConfigError, match=r"92137\.yaml: services\.factures"):
        approval_routing(tenant("92137", None, services={"factures": block}))


def test_the_shipped_tenant_files_route_invoices() -> None:
    from kernel.settings import HubSettings
    from kernel.tenants import load_tenants

    tenants = load_tenants(HubSettings().tenants_dir)
    assert approval_routing(tenants["92137"]).service_for("TRAV-2026-17", None) == "travaux"
    assert approval_routing(tenants["62063"]).service_for(None, None) == "comptabilite"


# -- booking and payment -----------------------------------------------------------------


def receipt(outcome: str, **fields: Any) -> DeliveryReceipt:
    return DeliveryReceipt.model_validate(
        {
            "source_event_id": "e-1",
            "source_event_type": "factures.invoice.approved.v1",
            "route": "invoices-accounting",
            "connector": "stesud",
            "idempotency_key": "e-1:invoices-accounting",
            "outcome": outcome,
            "attempts": 3,
            **fields,
        }
    )


def test_a_delivered_receipt_books_under_the_accounting_reference() -> None:
    assert booking_outcome(receipt("delivered", external_reference="ACC-2026-42")) == Booked(
        "ACC-2026-42", "stesud"
    )
    failed = booking_outcome(receipt("dead", reason="timeout"))
    assert isinstance(failed, NotBooked) and "3 attempts" in failed.reason


def test_a_payment_cannot_be_recorded_before_it_happens_in_brussels() -> None:
    # 23:30 UTC on 31 March is already 1 April in Brussels.
    check_paid_on(date(2026, 4, 1), datetime(2026, 3, 31, 23, 30, tzinfo=UTC))
    with pytest.raises(ProblemError) as error:
        check_paid_on(date(2026, 4, 2), datetime(2026, 3, 31, 23, 30, tzinfo=UTC))
    assert error.value.slug == "paid-in-the-future"


# -- reasons for the clerk ---------------------------------------------------------------


def test_common_rule_families_get_a_plain_explanation_and_a_status_reason_code() -> None:
    totals = Finding("BR-CO-15", "fatal", "[BR-CO-15]-Invoice total amount with VAT …", "/Invoice")
    category = Finding("BR-S-08", "fatal", "For each different value of …", "/Invoice")
    reference = Finding("PEPPOL-EN16931-R003", "fatal", "A buyer reference …", "/Invoice")
    found = reasons.reasons_for([totals, category, reference])
    assert [reason.code for reason in found] == ["PRI", "LEG", "REF"]
    assert found[0].text.startswith("The total with VAT is not the total without VAT plus")
    assert "[BR-CO-15: Invoice total amount with VAT …]" in found[0].text
    assert "standard rate (S)" in found[1].text
    assert "which service ordered this" in found[2].text


def test_unexplained_rules_fall_back_to_the_official_message_and_warnings_are_no_reasons() -> None:
    odd = Finding("XY-1", "fatal", "Something official.", "/Invoice")
    warning = Finding("BR-CO-10", "warning", "ignored", "/Invoice")
    assert reasons.reasons_for([odd, warning]) == [
        reasons.Reason("OTH", "Something official [XY-1].", "XY-1")
    ]


def test_a_rule_broken_on_many_lines_is_one_reason_counting_them() -> None:
    findings = [
        Finding("BR-CL-23", "fatal", "unit", f"/Invoice/cac:InvoiceLine[{n}]") for n in (1, 2)
    ]
    [reason] = reasons.reasons_for(findings)
    assert "(2 places)" in reason.text and reason.code == "QTY"


def test_parser_refusals_keep_their_plain_message() -> None:
    attack = Finding("entity-forbidden", "fatal", "The document declares entities (lol).", "/")
    assert reasons.reasons_for([attack]) == [
        reasons.Reason("UNR", "The document declares entities (lol).", "entity-forbidden")
    ]
