"""factures' tables as an earlier version left them, brought up to date with their rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from kernel.database import create_engine, utcnow
from kernel.migrations import migrate, table_of
from services.factures.domain import duplicate_key
from services.factures.tables import MIGRATIONS, Invoice, InvoiceStep

pytestmark = pytest.mark.integration

SUPPLIER = "vat:BE0403170701"


async def test_duplicates_become_one_per_supplier_and_number_keeping_every_document(
    database: tuple[str, str | None],
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    invoices, history = table_of(Invoice), table_of(InvoiceStep)
    start = utcnow()

    def row(
        row_id: str, number: str, key: str | None, *, kind: str = "Invoice", tenant: str = "92137"
    ) -> dict[str, object]:
        return {
            "id": row_id,
            "tenant": tenant,
            "channel": "peppol",
            "state": "rejected" if key is None else "approved",
            "kind": kind,
            "number": number,
            "supplier_key": SUPPLIER,
            "accepted_key": key,
            "preceding_invoices": [],
            "findings": [],
            "rejection_reasons": [],
            # In the order of the ids: "a" was received first.
            "created_at": start + timedelta(minutes=ord(row_id[0])),
            "updated_at": start,
            "version": 1,
        }

    rows = [
        # As migration 7 left them: keyed by kind, supplier, number and issue date.
        row("a-first", "F-77", f"{SUPPLIER}|F-77|2026-03-02"),
        row("b-reissued", "F-77", f"{SUPPLIER}|F-77|2026-03-03"),
        row("c-invoice", "2026-17", f"{SUPPLIER}|2026-17|2026-03-02"),
        row("d-credit", "2026-17", f"CreditNote|{SUPPLIER}|2026-17|2026-03-02", kind="CreditNote"),
        row("e-elsewhere", "F-77", f"{SUPPLIER}|F-77|2026-03-03", tenant="62063"),
        row("f-rejected", "F-77", None),
    ]
    try:
        assert await migrate(engine, "factures", MIGRATIONS[:7], schema=schema) == 7
        async with engine.begin() as connection:
            await connection.execute(insert(invoices), rows)

        assert await migrate(engine, "factures", MIGRATIONS, schema=schema) == len(MIGRATIONS)
        # Run again (a restart), the migrations leave the rows as they are.
        assert await migrate(engine, "factures", MIGRATIONS, schema=schema) == len(MIGRATIONS)

        async with engine.connect() as connection:
            kept = {
                r.id: (r.state, r.accepted_key)
                for r in await connection.execute(
                    select(invoices.c.id, invoices.c.state, invoices.c.accepted_key)
                )
            }
            notes = {
                r.invoice_id: (r.state, r.note)
                for r in await connection.execute(
                    select(history.c.invoice_id, history.c.state, history.c.note)
                )
            }
    finally:
        await engine.dispose()

    f77, n17 = duplicate_key(SUPPLIER, "F-77"), duplicate_key(SUPPLIER, "2026-17")
    # Every document is kept in its state; the earliest of each number holds the key, so a
    # new copy is refused; the later ones no longer hold one (two could not).
    assert kept == {
        "a-first": ("approved", f77),
        "b-reissued": ("approved", None),
        "c-invoice": ("approved", n17),
        "d-credit": ("approved", None),
        "e-elsewhere": ("approved", f77),  # another tenant's books
        "f-rejected": ("rejected", None),
    }
    # The clerk is told to check the later ones before they are paid twice.
    assert set(notes) == {"b-reissued", "d-credit"}
    state, note = notes["b-reissued"]
    assert state == "approved" and "Possible duplicate" in note and "a-first" in note
    assert "c-invoice" in notes["d-credit"][1]
