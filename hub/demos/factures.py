"""Factures' demo: suppliers' invoices through the Peppol sandbox, approved and booked."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pybase64

from hub.demos import DemoRun, ServiceResult, StepFailed, call
from hub.invoices import FAULTS, SupplierInvoice, supplier_invoice
from kernel.tenants import load_tenants

#: Every fifth invoice carries a fault a clerk meets (wrong totals, unknown VAT category,
#: no buyer reference, a CII document instead of UBL), in turn.
FAULTY_EVERY = 5


async def factures_demo(run: DemoRun) -> ServiceResult:
    """Suppliers send invoices through the Peppol sandbox; a clerk approves the valid ones.

    Delivered: a valid invoice booked by the tenant's accounting software.
    Rejected: an invalid one refused with reasons and answered RE to the supplier.
    """
    count, timeout, tenant = run.count, run.timeout, run.tenant
    result = ServiceResult(rejected=0)
    participant = _participant(run)
    if participant is None:
        # As meeting's demo: this service failed, the others still run and are reported.
        result.submitted = result.failed = count
        result.problems.append(f"tenant {tenant} has no Peppol participant (peppol.participant)")
        return result
    rng = random.Random()
    sandbox = run.client("sandbox")
    factures = run.client("factures", ["factures:read", "factures:write"])
    async with sandbox, factures:
        sent: dict[str, tuple[SupplierInvoice, float]] = {}
        submit = run.task("factures: suppliers send invoices", count)
        for number in range(count):
            fault = (
                FAULTS[number // FAULTY_EVERY % len(FAULTS)] if number % FAULTY_EVERY == 4 else None
            )
            invoice = supplier_invoice(rng, number, buyer_participant=participant, fault=fault)
            drop = {
                "sender": invoice.sender,
                "receiver": participant,
                "document_base64": pybase64.b64encode(invoice.document).decode(),
            }
            response = await sandbox.post("/_sandbox/peppol/inbox", json=drop)
            if response.status_code == 201:
                sent[response.json()["messageId"]] = (invoice, time.monotonic())
            else:
                result.problems.append(
                    f"access point: {response.status_code} {response.text[:200]}"
                )
            run.advance(submit)
        result.submitted = len(sent) + len(result.problems)
        result.failed += len(result.problems)  # refused by the access point: never delivered

        follow = run.task("factures: approving and booking", len(sent))
        approved: set[str] = set()
        rejected: list[SupplierInvoice] = []
        pending = dict(sent)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message_id, (invoice, started) in list(pending.items()):
                listed = await factures.get(
                    "/v1/invoices", params={"peppol_message_id": message_id}
                )
                items = listed.json()["items"] if listed.status_code == 200 else []
                if not items:
                    continue
                found = items[0]
                state = found["state"]
                if state == "to_approve" and found["id"] not in approved:
                    # The clerk of the ordering service approves what is correct.
                    try:
                        await call(factures, "POST", f"/v1/invoices/{found['id']}/approve")
                    except StepFailed as exc:
                        # Never tried again: reported with its own error now, not as a
                        # timeout at the end of the run.
                        del pending[message_id]
                        run.advance(follow)
                        result.failed += 1
                        result.problems.append(f"{invoice.number}: approval refused: {exc}")
                        continue
                    approved.add(found["id"])
                    continue
                if state not in ("booked", "rejected"):
                    continue
                del pending[message_id]
                run.advance(follow)
                if state == "booked" and invoice.fault is None:
                    result.delivered += 1
                    result.latencies_ms.append((time.monotonic() - started) * 1000)
                elif state == "rejected" and invoice.fault is not None:
                    result.rejected = (result.rejected or 0) + 1
                    rejected.append(invoice)
                else:
                    result.failed += 1
                    result.problems.append(
                        f"{invoice.number} ({invoice.fault or 'valid'}) ended {state}"
                    )
            if pending:
                await asyncio.sleep(0.5)
        for invoice, _ in pending.values():
            result.failed += 1
            result.problems.append(f"{invoice.number}: not handled within {timeout:.0f} s")
        await _check_supplier_answers(sandbox, rejected, result, deadline)
    return result


def _participant(run: DemoRun) -> str | None:
    """The run's tenant's Peppol participant: suppliers send it their invoices; None for a
    tenant not configured, or without one."""
    tenant = load_tenants(run.settings.tenants_dir).get(run.tenant)
    peppol = tenant.raw.get("peppol") if tenant is not None else None
    participant = peppol.get("participant") if isinstance(peppol, dict) else None
    return str(participant) if participant else None


async def _check_supplier_answers(
    sandbox: httpx.AsyncClient,
    rejected: list[SupplierInvoice],
    result: ServiceResult,
    deadline: float,
) -> None:
    """An invoice counted rejected stays so only once its supplier got the RE answer, which
    the gateway may still be delivering: asked again until the run's deadline."""
    # A CII document has no number the answer could name.
    waiting = [invoice for invoice in rejected if invoice.fault != "cii"]
    while True:
        answers = (await sandbox.get("/_sandbox/peppol/inbox")).json()["answers"]
        waiting = [
            invoice
            for invoice in waiting
            if "RE" not in {answer["status"] for answer in answers.get(invoice.number, [])}
        ]
        if not waiting or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.5)
    for invoice in waiting:
        result.rejected = (result.rejected or 0) - 1
        result.failed += 1
        result.problems.append(f"{invoice.number}: rejected, but no RE reached the supplier")
