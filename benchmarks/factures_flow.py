"""``make bench`` (f): invoices end to end, from the Peppol sandbox to the accounting connector.

Tenant 62063 as committed (Inforius over REST). The sandbox, factures and the
gateway run as ``hub up`` runs them, the gateway polling the access point every
``HUB_PEPPOL_POLL_SECONDS`` = 0.2 s (the other sources, NOTICe, the oversight's
outcomes and the opinions, at the default 5 s). The benchmark:

1. makes N valid supplier invoices (``hub.invoices.supplier_invoice``), untimed;
2. drops them into the sandbox's Peppol inbox (``POST /_sandbox/peppol/inbox``,
   one request each, 8 at a time: the sandbox has no batch drop);
3. plays the clerk: approves each invoice (``POST /v1/invoices/{id}/approve``)
   as soon as ``factures.invoice.approval_requested.v1`` names it;
4. stops when every invoice's ``factures.invoice.booked.v1`` has come (the
   accounting connector's receipt, processed by factures).

The drops and approvals go through ``benchmarks.lean_http`` (httpx's client took
1.9 ms of the two cores' CPU per invoice, the lean one 0.6 ms).

Reported: invoices/s from the first drop to the last booking (the seeding
overlaps the flow), the rate between the first and the last booking, the time
the drops took, CPU ms per invoice per process, peak RSS. 20 invoices go
through first, untimed (consumer groups join, connections open). Target:
100 invoices/s.

``python -m benchmarks.factures_flow [--count N]`` runs this part alone
(var/bench/factures_flow.json); ``make bench BENCH_ARGS="--only factures"``
merges it into var/bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from typing import Any

import pybase64
import yaml

from benchmarks.common import (
    BenchHub,
    EventWatcher,
    PeakMemory,
    bench_hub,
    committed_tenant_file,
    cpu_ms_per_item,
    cpu_seconds,
    load_average,
    machine,
    run_client,
    save_results,
)
from benchmarks.lean_http import LeanClient
from contracts.events.factures import (
    TOPIC,
    InvoiceApprovalRequested,
    InvoiceBooked,
    InvoiceRejected,
)
from hub.invoices import supplier_invoice

TENANT = "62063"  # books with Inforius over REST
POLL_SECONDS = "0.2"
TARGET_PER_SECOND = 100.0
WARM_UP = 20
CONCURRENCY = 8
APPROVAL = InvoiceApprovalRequested.TYPE
BOOKED = InvoiceBooked.TYPE
REJECTED = InvoiceRejected.TYPE
JSON = {"Content-Type": "application/json"}


class Clerk:
    """Approves each invoice the moment factures asks for its approval."""

    def __init__(self, factures: LeanClient) -> None:
        self._factures = factures
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self.problems: list[str] = []

    def on_event(self, event_type: str, invoice_id: str) -> None:
        if event_type == APPROVAL:
            task = asyncio.create_task(self._approve(invoice_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _approve(self, invoice_id: str) -> None:
        async with self._slots:
            response = await self._factures.post(f"/v1/invoices/{invoice_id}/approve", b"")
        if response.status_code != 200:
            self.problems.append(f"approve {invoice_id}: {response.status_code} {response.text}")


async def drop_all(sandbox: LeanClient, drops: list[dict[str, str]]) -> tuple[list[str], float]:
    """Drop every invoice into the access point's inbox; their message ids and the seconds."""
    slots = asyncio.Semaphore(CONCURRENCY)

    async def drop(body: dict[str, str]) -> str:
        async with slots:
            response = await sandbox.post("/_sandbox/peppol/inbox", json.dumps(body).encode(), JSON)
        if response.status_code != 201:
            raise RuntimeError(f"the sandbox refused a drop: {response.status_code}")
        return str(response.json()["messageId"])

    started = time.perf_counter()
    message_ids = await asyncio.gather(*(drop(body) for body in drops))
    return list(message_ids), time.perf_counter() - started


def invoice_drops(count: int, first: int, participant: str) -> list[dict[str, str]]:
    rng = random.Random(first)
    drops = []
    for number in range(first, first + count):
        invoice = supplier_invoice(rng, number, buyer_participant=participant)
        drops.append(
            {
                "sender": invoice.sender,
                "receiver": participant,
                "document_base64": pybase64.b64encode(invoice.document).decode(),
            }
        )
    return drops


async def measure(hub: BenchHub, count: int) -> dict[str, Any]:
    tenant_file = yaml.safe_load(committed_tenant_file(TENANT))
    participant = str(tenant_file["peppol"]["participant"])
    pids = hub.pids()
    memory = PeakMemory(dict(pids))
    memory.start()
    pids["benchmark"] = os.getpid()
    async with (
        LeanClient(hub.url("sandbox")) as sandbox,
        LeanClient(
            hub.url("factures"), headers=hub.token(TENANT, "factures:read", "factures:write")
        ) as factures,
    ):
        clerk = Clerk(factures)
        watcher = EventWatcher(hub.bootstrap, [TOPIC], [APPROVAL, BOOKED, REJECTED], clerk.on_event)
        await watcher.start()
        await drop_all(sandbox, invoice_drops(WARM_UP, 0, participant))
        await watcher.wait_count(BOOKED, WARM_UP, timeout=120)

        drops = invoice_drops(count, 10_000, participant)
        load_before = load_average()
        before = cpu_seconds(pids)
        started = time.perf_counter()
        _, drop_seconds = await drop_all(sandbox, drops)
        await watcher.wait_count(BOOKED, WARM_UP + count, timeout=max(300.0, count))
        after = cpu_seconds(pids)
        booked = sorted(watcher.arrived[BOOKED].values())[WARM_UP:]
        await watcher.stop()
    elapsed = booked[-1] - started
    if watcher.arrived[REJECTED] or clerk.problems:
        raise RuntimeError(
            f"{len(watcher.arrived[REJECTED])} invoices rejected; clerk: {clerk.problems[:3]}"
        )
    per_second = count / elapsed
    return {
        "invoices": count,
        "poll_seconds": float(POLL_SECONDS),
        "seconds": round(elapsed, 2),
        "invoices_per_second": round(per_second, 1),
        "drop_seconds": round(drop_seconds, 2),
        "drops_per_second": round(count / drop_seconds, 1),
        "first_booked_after_seconds": round(booked[0] - started, 2),
        "first_to_last_booked_per_second": round((count - 1) / (booked[-1] - booked[0]), 1),
        "cpu_ms_per_invoice": cpu_ms_per_item(before, after, count),
        "peak_rss_mb": memory.stop(),
        "target_per_second": TARGET_PER_SECOND,
        "met": per_second >= TARGET_PER_SECOND,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


async def run_async(count: int) -> dict[str, Any]:
    environment = {"HUB_PEPPOL_POLL_SECONDS": POLL_SECONDS}
    async with bench_hub({TENANT: committed_tenant_file(TENANT)}, environment) as hub:
        await hub.start("sandbox", "factures", "gateway")
        results = await measure(hub, count)
    results["machine"] = machine()
    print(json.dumps(results, indent=2))
    return results


def run(count: int = 1000) -> dict[str, Any]:
    return run_client(run_async(count))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1000, help="invoices timed")
    results = run(parser.parse_args().count)
    save_results("factures_flow", results)


if __name__ == "__main__":
    main()
