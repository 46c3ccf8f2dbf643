"""Connector to Inforius accounting: books approved purchase invoices over REST.

One ``factures.invoice.approved.v1`` event becomes one ``POST
{base_url}/purchase-invoices`` of the modelled contract
``contracts/vendors/inforius-openapi.yaml`` (JSON, ``X-API-Key``). The answer's
``bookingReference`` is the delivery's external reference.

Errors go through ``gateway.errors``: 4xx are permanent with Inforius's
explanation (e.g. ``UNKNOWN_SUPPLIER``), 5xx, 429 and timeouts retry. Each
request carries ``Idempotency-Key: <delivery key>``, so a retry after a lost
answer gets the first booking, never a second one.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr

from contracts.events.factures import InvoiceApproved
from gateway.connectors.accounting import (
    amount,
    approved_invoice_of,
    quantity,
    ubl_file_name,
    vat_number,
)
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

TYPE_NAME = "inforius"
TARGET = "Inforius"


class InforiusSettings(ConnectorSettings):
    type: Literal["inforius"]
    #: The API root; ``/purchase-invoices`` is appended.
    base_url: TargetUrl
    api_key: SecretStr
    #: The accounting administration; by default the tenant's NIS code.
    administration: str | None = Field(default=None, pattern=r"^[0-9]{5}$")
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)


class InforiusConnector:
    type_name = TYPE_NAME

    def __init__(self, settings: InforiusSettings, tenant: str, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.attempt_seconds = attempt_seconds_for(settings.timeout_seconds)
        self._administration = settings.administration or tenant
        self._http = http
        self._timeout = httpx.Timeout(settings.timeout_seconds)

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        approved = approved_invoice_of(delivery, TARGET)
        return await post_delivery(
            self._http,
            self.settings.base_url.rstrip("/") + "/purchase-invoices",
            self.purchase_invoice(approved),
            delivery=delivery,
            target=TARGET,
            api_key_headers={"X-API-Key": self.settings.api_key.get_secret_value()},
            timeout=self._timeout,
            reference_field="bookingReference",
        )

    def purchase_invoice(self, approved: InvoiceApproved) -> dict[str, Any]:
        document = approved.document
        supplier = document.supplier
        if not supplier.vat_id:
            raise PermanentDeliveryError(
                f"{TARGET} books a supplier by its VAT number, and this invoice has none (BT-31)."
            )
        body: dict[str, Any] = {
            "administration": self._administration,
            "externalReference": approved.invoice_id,
            "documentType": "INVOICE" if document.kind == "Invoice" else "CREDIT_NOTE",
            "invoiceNumber": document.number,
            "issueDate": document.issue_date.isoformat(),
            "dueDate": document.due_date.isoformat() if document.due_date else None,
            "currency": document.currency,
            "supplier": _without_none(
                {
                    "name": supplier.name,
                    "vatNumber": vat_number(supplier.vat_id),
                    "enterpriseNumber": supplier.enterprise_number,
                    "iban": supplier.iban.replace(" ", "").upper() if supplier.iban else None,
                }
            ),
            "buyerReference": document.buyer_reference,
            "orderReference": document.order_reference,
            "precedingInvoiceNumber": document.preceding_invoice,
            "totals": {
                "taxExclusive": amount(document.tax_exclusive_amount),
                "tax": amount(document.tax_amount),
                "payable": amount(document.payable_amount),
            },
            "vatLines": [
                _without_none(
                    {
                        "category": vat.category,
                        "rate": amount(vat.rate),
                        "taxableAmount": amount(vat.taxable_amount),
                        "taxAmount": amount(vat.tax_amount),
                    }
                )
                for vat in document.vat_breakdown
            ],
            "lines": [
                _without_none(
                    {
                        "lineId": line.line_id,
                        "description": line.description,
                        "quantity": quantity(line.quantity),
                        "unitCode": line.unit,
                        "netAmount": amount(line.net_amount),
                        "vatCategory": line.vat_category,
                        "vatRate": amount(line.vat_rate),
                    }
                )
                for line in document.lines
            ],
            "ubl": {"filename": ubl_file_name(document), "contentBase64": document.ubl_base64},
        }
        return _without_none(body)

    async def aclose(self) -> None:
        pass  # the HTTP client is shared; the gateway closes it


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def create_connector(context: ConnectorContext, config: dict[str, Any]) -> InforiusConnector:
    return InforiusConnector(
        settings_of(InforiusSettings, context, config), context.tenant, context.http
    )


register_connector(TYPE_NAME, create_connector, event_types=[InvoiceApproved.TYPE])
