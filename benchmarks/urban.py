"""``make bench`` (h): NOTICe notifications end to end, and urban's memory with 100,000 files.

Tenant 62063 as committed (NOTICe instance ``NOTICE-62063``).

1. Flow: the sandbox, urban and the gateway run as ``hub up`` runs them, the
   gateway polling NOTICe every ``HUB_NOTICE_POLL_SECONDS`` = 0.2 s (the other
   sources at the default 5 s). ``--notifications`` notifications (one applicant, a person, whose
   identity urban asks the KSZ-BCSS sandbox for; one parcel; one 2 kB PDF) are
   seeded in batches of 1,000 (``POST /_sandbox/notice/notifications``; the
   sandbox's body limit is 12 MiB). The
   benchmark declares each file complete (``POST /v1/files/{id}/complete``) as
   soon as ``urban.file.opened.v1`` names it; completeness emits the PARTIAL
   response the gateway posts to NOTICe. It stops when NOTICe (``GET
   /_sandbox/notice/notifications?without_response=PARTIAL``, read every
   second) shows a PARTIAL for every notification. 20 notifications go
   through first, untimed. Reported: notifications/s from the seeding to the
   last PARTIAL, CPU ms per notification per process, peak RSS. Target: 200/s.
2. Memory: 100,000 files (with their applicant and parcel, their deadlines
   computed by the service's ``deadlines`` module as ``refresh_deadlines``
   does) are inserted into urban's SQLite file, in bulk through its table
   models, before urban starts. Urban then runs its first deadline-watcher
   cycle (at start) while the benchmark pages through ``GET /v1/files``
   (offsets across the whole list, and the ``deadline_before`` view). Reported:
   urban's peak RSS. Target: under 300 MB.

``python -m benchmarks.urban`` runs this part alone (var/bench/urban.json);
``make bench BENCH_ARGS="--only urban"`` merges it into var/bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import psutil
import pybase64
from sqlalchemy import func, insert, select

from benchmarks.common import (
    KEEP_ALIVE_SAFE_LIMITS,
    BenchHub,
    EventWatcher,
    PeakMemory,
    bench_hub,
    committed_tenant_file,
    cpu_ms_per_item,
    cpu_seconds,
    load_average,
    machine,
    percentile,
    run_client,
    save_results,
)
from contracts.events.urban import TOPIC, FileOpened
from hub.traffic import letter_pdf, random_niss
from kernel.database import create_engine
from kernel.days import commune_day
from kernel.migrations import migrate
from services.urban import deadlines
from services.urban.domain import FileState, IdentityStatus, format_reference
from services.urban.tables import MIGRATIONS, FileApplicant, FileParcel, PermitFile

TENANT = "62063"
INSTANCE = "NOTICE-62063"
POLL_SECONDS = "0.2"
WARM_UP = 20
SEED_BATCH = 1_000
CONCURRENCY = 8
WARNING_DAYS = 5  # the committed tenant file's services.urban.warning_days
TARGET_PER_SECOND = 200.0
TARGET_RSS_MB = 300.0
OPENED = FileOpened.TYPE


# -- 1. the NOTICe flow -------------------------------------------------------------------


def notifications(count: int, first: int) -> list[dict[str, Any]]:
    rng = random.Random(first)
    plan = letter_pdf("Plans", "benchmark")
    plan += b"\n%" + b"0" * max(0, 2_000 - len(plan) - 2)
    content = pybase64.b64encode(plan).decode()
    return [
        {
            "id": f"NOT-BENCH-{number:06d}",
            "instance_code": INSTANCE,
            "file_type": "permis_urbanisme",
            "subject": f"Construction d'une maison unifamiliale ({number})",
            "applicants": [
                {"kind": "person", "identifier": random_niss(rng), "name": "Lambert, Sophie"}
            ],
            "parcels": [{"capakey": "62063A0123/00B000", "address": f"Rue Haute {number}"}],
            "documents": [{"filename": "plans.pdf", "content_base64": content}],
        }
        for number in range(first, first + count)
    ]


class Clerk:
    """Declares each file complete the moment urban announces it."""

    def __init__(self, urban: httpx.AsyncClient) -> None:
        self._urban = urban
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self.conflicts: list[str] = []
        self.problems: list[str] = []

    def on_event(self, event_type: str, file_id: str) -> None:
        task = asyncio.create_task(self._complete(file_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _complete(self, file_id: str) -> None:
        for _ in range(5):
            async with self._slots:
                response = await self._urban.post(f"/v1/files/{file_id}/complete")
            if response.status_code == 200:
                return
            # The identity check's receipt may change the file at the same moment (409).
            self.conflicts.append(f"complete {file_id}: {response.status_code} {response.text}")
            await asyncio.sleep(0.1)
        self.problems.append(self.conflicts[-1])


async def wait_for_partials(sandbox: httpx.AsyncClient, timeout: float) -> tuple[float, int]:
    """When NOTICe showed a PARTIAL for every notification seeded so far (all of them are
    the benchmark instance's); and how many reads it took.

    Each read asks how many still lack one, the count alone: listing 10,000
    notifications every second cost the sandbox about a millisecond of CPU per
    notification of the flow.
    """
    deadline, reads = time.perf_counter() + timeout, 0
    while True:
        listed = await sandbox.get(
            "/_sandbox/notice/notifications",
            params={"instance_code": INSTANCE, "without_response": "PARTIAL", "limit": 0},
        )
        reads += 1
        waiting = listed.json()["count"]
        if waiting == 0:
            return time.perf_counter(), reads
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{waiting} notifications had no PARTIAL in {timeout}s")
        await asyncio.sleep(1.0)


async def notice_flow(hub: BenchHub, count: int) -> dict[str, Any]:
    pids = hub.pids()
    memory = PeakMemory(dict(pids))
    memory.start()
    pids["benchmark"] = os.getpid()
    async with (
        httpx.AsyncClient(base_url=hub.url("sandbox"), timeout=120) as sandbox,
        httpx.AsyncClient(
            base_url=hub.url("urban"),
            timeout=60,
            limits=KEEP_ALIVE_SAFE_LIMITS,
            headers=hub.token(TENANT, "urban:read", "urban:write"),
        ) as urban,
    ):
        clerk = Clerk(urban)
        watcher = EventWatcher(hub.bootstrap, [TOPIC], [OPENED], clerk.on_event)
        await watcher.start()
        warm_up = notifications(WARM_UP, 0)
        seeded = await sandbox.post(
            "/_sandbox/notice/notifications", json={"notifications": warm_up}
        )
        seeded.raise_for_status()
        try:
            await wait_for_partials(sandbox, timeout=60)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}; the clerk met: {clerk.conflicts[:3]}") from exc
        clerk.conflicts.clear()

        batch = notifications(count, 100_000)
        load_before = load_average()
        before = cpu_seconds(pids)
        started = time.perf_counter()
        for first in range(0, count, SEED_BATCH):
            seeded = await sandbox.post(
                "/_sandbox/notice/notifications",
                json={"notifications": batch[first : first + SEED_BATCH]},
            )
            seeded.raise_for_status()
        seed_seconds = time.perf_counter() - started
        finished, reads = await wait_for_partials(sandbox, timeout=max(600.0, count / 5))
        after = cpu_seconds(pids)
        opened = sorted(watcher.arrived[OPENED].values())[WARM_UP:]
        await watcher.stop()
    if clerk.problems:
        raise RuntimeError(f"the clerk met problems: {clerk.problems[:3]}")
    elapsed = finished - started
    per_second = count / elapsed
    return {
        "notifications": count,
        "poll_seconds": float(POLL_SECONDS),
        "seconds": round(elapsed, 2),
        "notifications_per_second": round(per_second, 1),
        "seed_seconds": round(seed_seconds, 2),
        "files_opened_per_second": round(count / (opened[-1] - started), 1),
        "sandbox_reads_of_the_list": reads,
        "complete_retried_after_conflict": len(clerk.conflicts),
        "cpu_ms_per_notification": cpu_ms_per_item(before, after, count),
        "peak_rss_mb": memory.stop(),
        "target_per_second": TARGET_PER_SECOND,
        "met": per_second >= TARGET_PER_SECOND,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


# -- 2. memory with 100,000 files ---------------------------------------------------------


def _file_rows(
    rng: random.Random, number: int, today: date, now: datetime
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One file of the last three years: recent ones open, older ones complete or decided."""
    received_on = today - timedelta(days=rng.randrange(0, 3 * 365))
    age = (today - received_on).days
    complete_on = received_on + timedelta(days=10) if age > 12 else None
    decided_on = received_on + timedelta(days=70) if age > 100 else None
    state = (
        FileState.GRANTED
        if decided_on
        else FileState.COMPLETE
        if complete_on
        else FileState.RECEIVED
    )
    facts = deadlines.Facts(
        file_type="permis_urbanisme",
        received_on=received_on,
        complete_on=complete_on,
        missing_asked_on=None,
        opinions=(),
        inquiry_starts_on=None,
        decided_on=decided_on,
        notified_on=decided_on,
    )
    found = deadlines.deadlines(facts)
    upcoming = deadlines.next_open(found)
    file_id = str(uuid.uuid4())
    file = {
        "id": file_id,
        "tenant": TENANT,
        "reference": format_reference("permis_urbanisme", received_on.year, number),
        "file_type": "permis_urbanisme",
        "state": state,
        "subject": f"Transformation d'une habitation, rue Haute {number % 400}",
        "received_on": received_on,
        "complete_on": complete_on,
        "decision": "granted" if decided_on else None,
        "decided_on": decided_on,
        "notified_on": decided_on,
        "identity_flagged": False,
        "next_deadline": upcoming.name if upcoming else None,
        "next_deadline_on": upcoming.due_on if upcoming else None,
        "next_warning_on": deadlines.next_warning_on(found, today, WARNING_DAYS, {}),
        "origin": "rest",
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    applicant = {
        "file_id": file_id,
        "tenant": TENANT,
        "position": 0,
        "kind": "person",
        "identifier": random_niss(rng),
        "name": "Dupont, Marie",
        "address": f"Rue Haute {number % 400}, 4000 Liège",
        "identity_status": IdentityStatus.NOT_CHECKED,
    }
    parcel = {
        "file_id": file_id,
        "position": 0,
        "capakey": "62063A0123/00B000",
        "address": f"Rue Haute {number % 400}",
    }
    return file, applicant, parcel


async def load_files(hub: BenchHub, count: int) -> tuple[float, int]:
    """``count`` files in urban's database; the seconds it took, and how many await a warning."""
    settings = hub.settings
    schema = settings.database_schema_for("urban")
    engine = create_engine(settings.database_url_for("urban"), schema=schema)
    await migrate(engine, "urban", MIGRATIONS, schema=schema)
    rng, now = random.Random(9), datetime.now(UTC)
    today = commune_day(now)
    started = time.perf_counter()
    chunk = 5_000
    for first in range(0, count, chunk):
        rows = [_file_rows(rng, n + 1, today, now) for n in range(first, min(count, first + chunk))]
        async with engine.begin() as connection:
            await connection.execute(insert(PermitFile), [file for file, _, _ in rows])
            await connection.execute(insert(FileApplicant), [a for _, a, _ in rows])
            await connection.execute(insert(FileParcel), [p for _, _, p in rows])
    due = await warnings_due(engine, today)
    await engine.dispose()
    return time.perf_counter() - started, due


async def warnings_due(engine: Any, today: date) -> int:
    async with engine.connect() as connection:
        found = await connection.scalar(
            select(func.count()).select_from(PermitFile).where(PermitFile.next_warning_on <= today)
        )
    return int(found or 0)


async def urban_memory(hub: BenchHub, count: int) -> dict[str, Any]:
    load_seconds, due_before = await load_files(hub, count)
    await hub.start("urban")
    pid = hub.pids()["urban"]
    memory = PeakMemory({"urban": pid})
    memory.start()
    started_rss = round(psutil_rss_mb(pid), 1)
    latencies: list[float] = []
    rng = random.Random(4)
    async with httpx.AsyncClient(
        base_url=hub.url("urban"),
        timeout=60,
        headers=hub.token(TENANT, "urban:read"),
        limits=KEEP_ALIVE_SAFE_LIMITS,
    ) as urban:

        async def page(params: dict[str, Any]) -> None:
            begun = time.perf_counter()
            response = await urban.get("/v1/files", params=params)
            latencies.append((time.perf_counter() - begun) * 1000)
            response.raise_for_status()

        for _ in range(50):
            await asyncio.gather(
                page({"limit": 200, "offset": rng.randrange(0, count - 200)}),
                page({"limit": 200, "deadline_before": commune_day(datetime.now(UTC)).isoformat()}),
                page({"limit": 50, "state": "received"}),
                page({"limit": 200, "offset": rng.randrange(0, count - 200), "state": "granted"}),
            )
        engine = create_engine(
            hub.settings.database_url_for("urban"),
            schema=hub.settings.database_schema_for("urban"),
        )
        watcher_done, due_after = None, due_before
        begun = time.perf_counter()
        today = commune_day(datetime.now(UTC))
        while time.perf_counter() - begun < 180:
            due_after = await warnings_due(engine, today)
            if due_after == 0:
                watcher_done = round(time.perf_counter() - begun, 1)
                break
            await asyncio.sleep(1.0)
        await engine.dispose()
        await asyncio.sleep(2.0)  # the relay publishes the last warnings
    peak = memory.stop()["urban"]
    return {
        "files": count,
        "load_seconds": round(load_seconds, 1),
        "files_with_a_warning_due": due_before,
        "files_with_a_warning_due_after_the_cycle": due_after,
        "watcher_cycle_done_within_seconds": watcher_done,
        "list_requests": len(latencies),
        "list_p50_ms": percentile(latencies, 0.50),
        "list_p99_ms": percentile(latencies, 0.99),
        "rss_after_start_mb": started_rss,
        "peak_rss_mb": peak,
        "target_rss_mb": TARGET_RSS_MB,
        "met": peak < TARGET_RSS_MB,
        "load_average": load_average(),
    }


def psutil_rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss / 1_048_576)


async def run_async(count: int, files: int) -> dict[str, Any]:
    tenant_files = {TENANT: committed_tenant_file(TENANT)}
    results: dict[str, Any] = {}
    async with bench_hub(tenant_files, {"HUB_NOTICE_POLL_SECONDS": POLL_SECONDS}) as hub:
        await hub.start("sandbox", "urban", "gateway")
        results["notice_flow"] = await notice_flow(hub, count)
    async with bench_hub(tenant_files) as hub:
        results["memory"] = await urban_memory(hub, files)
    results["machine"] = machine()
    print(json.dumps(results, indent=2))
    return results


def run(count: int = 10_000, files: int = 100_000) -> dict[str, Any]:
    return run_client(run_async(count, files))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--notifications", type=int, default=10_000, help="pending at NOTICe")
    parser.add_argument("--files", type=int, default=100_000, help="in urban's database")
    args = parser.parse_args()
    results = run(args.notifications, args.files)
    save_results("urban", results)


if __name__ == "__main__":
    main()
