"""Connector to Stésud accounting: books approved purchase invoices by file exchange.

One ``factures.invoice.approved.v1`` event becomes one ``PurchaseInvoice``
file in the tenant's drop directory, and Stésud's ``Acknowledgement`` file
carries the booking reference (modelled contract:
``contracts/vendors/stesud-file-exchange.md`` and ``.xsd``).

Stésud answers when it has processed the file, not during the request, so a
delivery attempt never waits for it: the first attempt writes the file and
raises ``RetryableDeliveryError``; the engine's backoff comes back later and
each attempt looks for the acknowledgement, while other documents go on.
``BOOKED`` gives the booking reference; ``REJECTED`` is a permanent failure
with Stésud's reason.

The file is named after the idempotency key and written only when it is
neither waiting in ``in/`` nor processed in ``done/``: the same key never
writes a second file.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

from lxml import etree
from pydantic import Field, field_validator

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
    register_connector,
    settings_of,
)
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from kernel.settings import REPOSITORY_ROOT, HubSettings
from kernel.xml_parsing import parse_untrusted

TYPE_NAME = "stesud"
TARGET = "Stésud"
NAMESPACE = "urn:hub:vendors:stesud:exchange:1"
SCHEMA_PATH = REPOSITORY_ROOT / "contracts" / "vendors" / "stesud-file-exchange.xsd"
_NS = {"s": NAMESPACE}

#: Each connector's threads for its file I/O: its own, so that a drop share that hangs (a
#: hard NFS or SMB mount; a thread blocked on it cannot be stopped) holds this tenant's
#: Stésud deliveries only, not the default executor, where DNS lookups (aiohttp's
#: ThreadedResolver) and SQLite's large writes wait too.
FILE_THREADS = 2
#: How long every file thread may have waited on the share before the next attempts are
#: refused at once (a healthy share answers in milliseconds; the attempt's deadline is 30 s).
SHARE_STUCK_SECONDS = 10.0

_T = TypeVar("_T")


def default_drop_dir(hub: HubSettings) -> Path:
    """The drop directory when the tenant file names none; the sandbox uses the same."""
    return hub.var_dir / "stesud"


class StesudSettings(ConnectorSettings):
    type: Literal["stesud"]
    #: The directory shared with Stésud; None (or empty) means ``<HUB_VAR_DIR>/stesud``.
    drop_dir: Path | None = None
    #: The accounting administration (sub-directory); by default the tenant's NIS code.
    administration: str | None = Field(default=None, pattern=r"^[0-9]{5}$")

    @field_validator("drop_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if value == "" else value


def file_name(idempotency_key: str) -> str:
    return f"HUB-{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}.xml"


class StesudConnector:
    type_name = TYPE_NAME

    def __init__(self, settings: StesudSettings, tenant: str, drop_dir: Path) -> None:
        self.settings = settings
        # Each attempt writes or reads a small file: its acknowledgement, hours later, is
        # looked for by the next attempts, not waited for.
        self.attempt_seconds = 30.0
        self.administration = settings.administration or tenant
        self.directory = drop_dir / self.administration
        self._schema = etree.XMLSchema(etree.parse(str(SCHEMA_PATH)))
        self.share_stuck_seconds = SHARE_STUCK_SECONDS
        # Threads start at the first file operation: a connector never used costs none.
        self._pool = ThreadPoolExecutor(FILE_THREADS, thread_name_prefix=f"stesud-{tenant}")
        #: When each file operation now running in a thread started (monotonic), by token.
        self._running: dict[int, float] = {}
        self._running_lock = threading.Lock()
        self._tokens = itertools.count()

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        approved = approved_invoice_of(delivery, TARGET)
        name = file_name(delivery.idempotency_key)
        acknowledgement = await self._on_share(self._acknowledgement, name)
        if acknowledgement is not None:
            return self._outcome(name, acknowledgement)
        content = self.purchase_invoice(approved)
        try:
            written = await self._on_share(self._write_once, name, content)
        except OSError as exc:
            raise RetryableDeliveryError(f"{TARGET}: cannot write {name}: {exc}") from exc
        raise RetryableDeliveryError(
            f"{TARGET} has not acknowledged {name} yet"
            + (" (file written)" if written else " (file already written)")
        )

    async def aclose(self) -> None:
        # Not waiting: a thread stuck on a hung share would hold the gateway's shutdown.
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _on_share(self, work: Callable[..., _T], *args: Any) -> _T:
        """``work(*args)`` in one of this connector's threads; refused at once while all of
        them have waited on the share too long. An attempt cut by its deadline meanwhile
        leaves its thread to finish; one still queued is cancelled and never runs."""
        with self._running_lock:
            started = list(self._running.values())
        if len(started) >= FILE_THREADS and time.monotonic() - max(started) > (
            self.share_stuck_seconds
        ):
            # Queued behind them, the attempt would wait its deadline out for nothing.
            raise RetryableDeliveryError(
                f"{TARGET}: the drop share is not answering: {FILE_THREADS} file operations"
                f" in {self.directory} have waited over {self.share_stuck_seconds:g} s;"
                " check its mount"
            )
        token = next(self._tokens)

        def timed() -> _T:
            with self._running_lock:
                self._running[token] = time.monotonic()
            try:
                return work(*args)
            finally:
                with self._running_lock:
                    del self._running[token]

        return await asyncio.get_running_loop().run_in_executor(self._pool, timed)

    # -- the files ------------------------------------------------------------------------

    def _acknowledgement(self, name: str) -> etree._Element | None:
        path = self.directory / "out" / (name.removesuffix(".xml") + ".ack.xml")
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            root = parse_untrusted(content)
        except etree.XMLSyntaxError as exc:
            raise RetryableDeliveryError(
                f"{TARGET}'s acknowledgement {path.name} is unreadable: {exc}"
            ) from exc
        if not self._schema.validate(root):
            raise RetryableDeliveryError(
                f"{TARGET}'s acknowledgement {path.name} breaks the contract:"
                f" {self._schema.error_log.last_error}"
            )
        return root

    def _write_once(self, name: str, content: bytes) -> bool:
        """Write ``in/<name>`` unless it waits there or was processed; True if written."""
        incoming = self.directory / "in"
        # in/ before done/: Stésud moves in/ → done/ atomically, so one of the two has it.
        if (incoming / name).exists() or (self.directory / "done" / name).exists():
            return False
        incoming.mkdir(parents=True, exist_ok=True)
        temporary = incoming / (name + ".tmp")
        temporary.write_bytes(content)
        os.replace(temporary, incoming / name)
        return True

    @staticmethod
    def _outcome(name: str, acknowledgement: etree._Element) -> DeliveryResult:
        status = acknowledgement.findtext("s:Status", namespaces=_NS)
        if status == "BOOKED":
            reference = acknowledgement.findtext("s:BookingReference", namespaces=_NS) or ""
            return DeliveryResult(external_reference=reference.strip())
        reason = acknowledgement.find("s:Reason", namespaces=_NS)
        code = reason.get("code") if reason is not None else "?"
        text = (reason.text or "").strip() if reason is not None else ""
        raise PermanentDeliveryError(f"{TARGET} rejected {name}: {code}: {text}")

    # -- the invoice file -------------------------------------------------------------------

    def purchase_invoice(self, approved: InvoiceApproved) -> bytes:
        document = approved.document
        supplier = document.supplier
        if not supplier.vat_id:
            raise PermanentDeliveryError(
                f"{TARGET} books a supplier by its VAT number, and this invoice has none (BT-31)."
            )
        root = etree.Element(
            f"{{{NAMESPACE}}}PurchaseInvoice",
            {"administration": self.administration, "reference": approved.invoice_id},
            nsmap={None: NAMESPACE},
        )
        add = _adder(root)
        add("DocumentType", "INVOICE" if document.kind == "Invoice" else "CREDIT_NOTE")
        add("Number", document.number)
        add("IssueDate", document.issue_date.isoformat())
        add("DueDate", document.due_date.isoformat() if document.due_date else None)
        add("Currency", document.currency)
        party = _adder(etree.SubElement(root, f"{{{NAMESPACE}}}Supplier"))
        party("Name", supplier.name)
        party("VatNumber", vat_number(supplier.vat_id))
        party("EnterpriseNumber", supplier.enterprise_number)
        party("Iban", supplier.iban)
        add("BuyerReference", document.buyer_reference)
        add("OrderReference", document.order_reference)
        add("PrecedingInvoice", document.preceding_invoice)
        totals = _adder(etree.SubElement(root, f"{{{NAMESPACE}}}Totals"))
        totals("TaxExclusive", document.tax_exclusive_amount)
        totals("Tax", document.tax_amount)
        totals("Payable", document.payable_amount)
        for vat in document.vat_breakdown:
            row = _adder(etree.SubElement(root, f"{{{NAMESPACE}}}Vat"))
            row("Category", vat.category)
            row("Rate", vat.rate)
            row("TaxableAmount", vat.taxable_amount)
            row("TaxAmount", vat.tax_amount)
        for line in document.lines:
            row = _adder(etree.SubElement(root, f"{{{NAMESPACE}}}Line"))
            row("Id", line.line_id)
            row("Description", line.description)
            row("Quantity", quantity(line.quantity))
            row("Unit", line.unit)
            row("NetAmount", line.net_amount)
            row("VatCategory", line.vat_category)
            row("VatRate", line.vat_rate)
        ubl = etree.SubElement(root, f"{{{NAMESPACE}}}Ubl", {"filename": ubl_file_name(document)})
        ubl.text = document.ubl_base64
        if not self._schema.validate(root):
            # The event passed its own contract: what is left is a field Stésud cannot hold.
            raise PermanentDeliveryError(
                f"{TARGET} cannot hold this invoice: {self._schema.error_log.last_error}"
            )
        content: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        return content


def _adder(parent: etree._Element) -> Callable[[str, str | Decimal | None], None]:
    def add(tag: str, value: str | Decimal | None) -> None:
        if value is None:
            return
        text = amount(value) if isinstance(value, Decimal) else value
        etree.SubElement(parent, f"{{{NAMESPACE}}}{tag}").text = text

    return add


def create_connector(context: ConnectorContext, config: dict[str, Any]) -> StesudConnector:
    settings = settings_of(StesudSettings, context, config)
    return StesudConnector(
        settings, context.tenant, settings.drop_dir or default_drop_dir(context.hub)
    )


register_connector(TYPE_NAME, create_connector, event_types=[InvoiceApproved.TYPE])
