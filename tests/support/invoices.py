"""Invoice events as the factures service emits them, for the gateway's connector tests."""

from __future__ import annotations

import base64
from datetime import date
from decimal import Decimal

from contracts.envelope import CloudEvent, new_event
from contracts.events.factures import (
    AccountingDocument,
    AccountingLine,
    InvoiceApproved,
    InvoiceResponseRequested,
    Supplier,
    VatBreakdown,
)
from contracts.events.peppol import PeppolEndpoint

UBL = (
    b'<?xml version="1.0"?>'
    b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"/>'
)
KNOWN_SUPPLIER_VAT = "BE0406798006"
#: In sandbox/fixtures/accounting_suppliers.yaml: absent from the supplier files.
UNKNOWN_SUPPLIER_VAT = "BE0999999962"


def approved_invoice(
    *,
    tenant: str = "62063",
    invoice_id: str = "inv-1",
    number: str = "F-2026/0042",
    vat_id: str | None = KNOWN_SUPPLIER_VAT,
    ubl_base64: str | None = None,
    quantity: Decimal = Decimal("40"),
) -> CloudEvent:
    document = AccountingDocument(
        kind="Invoice",
        number=number,
        issue_date=date(2026, 11, 2),
        due_date=date(2026, 12, 2),
        currency="EUR",
        supplier=Supplier(
            name="Travaux Mosans SA",
            vat_id=vat_id,
            enterprise_number="0406798006",
            iban="BE71 0961 2345 6769",
        ),
        buyer_reference="TRAV-2026-17",
        order_reference="BC-TRAV-0099",
        tax_exclusive_amount=Decimal("1000.00"),
        tax_amount=Decimal("210.00"),
        payable_amount=Decimal("1210.00"),
        vat_breakdown=[
            VatBreakdown(
                category="S",
                rate=Decimal("21"),
                taxable_amount=Decimal("1000.00"),
                tax_amount=Decimal("210.00"),
            )
        ],
        lines=[
            AccountingLine(
                line_id="1",
                description="Réfection de trottoir, rue de la Station",
                quantity=quantity,
                unit="MTK",
                net_amount=Decimal("1000.00"),
                vat_category="S",
                vat_rate=Decimal("21"),
            )
        ],
        ubl_base64=ubl_base64 or base64.b64encode(UBL).decode(),
    )
    data = InvoiceApproved(invoice_id=invoice_id, approved_by="echevin.finances", document=document)
    return new_event(data, tenant=tenant, subject=invoice_id, source="urn:hub:factures")


def application_response(
    *,
    sender: str = "0208:0207123407",
    receiver: str = "0208:0406798006",
    invoice_number: str = "F-2026/0042",
    code: str = "RE",
    customization: str = "urn:fdc:peppol.eu:poacc:trns:invoice_response:3",
    root: str = "ApplicationResponse",
) -> bytes:
    """A BIS Invoice Response 3.0, written here from the BIS's structure."""
    sender_scheme, sender_id = sender.split(":")
    receiver_scheme, receiver_id = receiver.split(":")
    namespace = f"urn:oasis:names:specification:ubl:schema:xsd:{root}-2"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<{root} xmlns="{namespace}"
  xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
  xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
  <cbc:CustomizationID>{customization}</cbc:CustomizationID>
  <cbc:ProfileID>urn:fdc:peppol.eu:poacc:bis:invoice_response:3</cbc:ProfileID>
  <cbc:ID>resp-{invoice_number}</cbc:ID>
  <cbc:IssueDate>2026-11-23</cbc:IssueDate>
  <cac:SenderParty>
    <cbc:EndpointID schemeID="{sender_scheme}">{sender_id}</cbc:EndpointID>
    <cac:PartyLegalEntity><cbc:RegistrationName>Ville</cbc:RegistrationName></cac:PartyLegalEntity>
  </cac:SenderParty>
  <cac:ReceiverParty>
    <cbc:EndpointID schemeID="{receiver_scheme}">{receiver_id}</cbc:EndpointID>
    <cac:PartyLegalEntity><cbc:RegistrationName>Fournisseur</cbc:RegistrationName></cac:PartyLegalEntity>
  </cac:ReceiverParty>
  <cac:DocumentResponse>
    <cac:Response>
      <cbc:ResponseCode>{code}</cbc:ResponseCode>
      <cbc:EffectiveDate>2026-11-23</cbc:EffectiveDate>
    </cac:Response>
    <cac:DocumentReference>
      <cbc:ID>{invoice_number}</cbc:ID>
      <cbc:DocumentTypeCode>380</cbc:DocumentTypeCode>
    </cac:DocumentReference>
  </cac:DocumentResponse>
</{root}>
""".encode()


def endpoint(participant: str) -> PeppolEndpoint:
    scheme, identifier = participant.split(":")
    return PeppolEndpoint(scheme=scheme, identifier=identifier)


def invoice_response_requested(
    *,
    tenant: str = "62063",
    sender: str = "0208:0207123407",
    receiver: str = "0208:0406798006",
    invoice_id: str = "inv-1",
    code: str = "RE",
    document: bytes | None = None,
) -> CloudEvent:
    content = document or application_response(sender=sender, receiver=receiver, code=code)
    data = InvoiceResponseRequested(
        invoice_id=invoice_id,
        status=code,  # type: ignore[arg-type]
        sender=endpoint(sender),
        receiver=endpoint(receiver),
        application_response_base64=base64.b64encode(content).decode(),
        in_reply_to="ap-msg-1",
    )
    return new_event(data, tenant=tenant, subject=invoice_id, source="urn:hub:factures")
