"""``make bench`` (g): the meeting service's WS4PM facade and its public OParl API.

Tenant 62063 as committed (its WS4PM client ``urban-62063``). Only the meeting
process runs (with the broker: its outbox relays the items' events).

1. OParl: 10,000 published decisions (500 closed college meetings of 20
   decisions) are written into meeting's SQLite file before the process
   starts, by the benchmark, with the service's own code: its migrations, its
   table models, and ``publication.record_publication`` (the pseudonymised
   read model OParl serves). Then, ``--concurrency`` clients at once for
   ``--seconds``: half walk the ``papers``, ``agenda-items`` and ``meetings``
   lists page by page following the ``next`` links (cursor paging), half ask
   for random ``page=`` numbers of ``papers`` and ``agenda-items`` (offset
   paging), 20 objects a page (the default). Reported: pages/s, p50/p99/max.
   Then the URLs of that walk asked again at a fixed 500 pages/s for as long
   (``oparl_at_target_rate``), each timed from when it was due: the latency
   at the target rate. Targets: 500 pages/s, p99 under 50 ms at that rate.
   Then the same walk again on a
   meeting process that keeps no rendered page (``HUB_OPARL_PAGE_CACHE_MB=0``,
   ``oparl_without_page_cache``): what a first crawl after a publication costs.
2. WS4PM: ``--items`` ``createItem`` calls, each with a 1 MB PDF annex, HTTP
   Basic, ``--concurrency`` at a time; the SOAP envelope is built once with
   lxml and only the title changes. Every answer must be a 200 carrying the
   new item's UID. Reported: calls/s, p50/p99, CPU ms per call. Target: 100/s.

Peak RSS of meeting and the broker over both. ``python -m benchmarks.meeting``
runs this part alone (var/bench/meeting.json); ``make bench BENCH_ARGS="--only
meeting"`` merges it into var/bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pybase64
from lxml import etree

from benchmarks.common import (
    BenchHub,
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
from benchmarks.lean_http import LeanClient
from hub.supervisor import stop_all
from hub.traffic import letter_pdf
from kernel.database import create_engine, session_factory
from kernel.errors import SOAP_ENV
from kernel.migrations import migrate
from services.meeting.domain import Decision, ItemState, MeetingState, format_decision_number
from services.meeting.publication import record_publication
from services.meeting.tables import MIGRATIONS, Item, Meeting
from services.meeting.ws4pm import WS4PM_NS

TENANT = "62063"
WS4PM_USER, WS4PM_PASSWORD = "urban-62063", "sandbox-ws4pm-62063"
DECISIONS, PER_MEETING = 10_000, 20
ANNEX_BYTES = 1_000_000
TITLE_MARK = "@@TITLE@@"
TARGET_CREATE_PER_SECOND = 100.0
TARGET_PAGES_PER_SECOND = 500.0
TARGET_PAGE_P99_MS = 50.0
#: Requests of the fixed-rate OParl run in flight at once, at most.
PACED_IN_FLIGHT = 32
ATTENDEES = [
    {"name": "Marc Bourgmestre", "role": "bourgmestre", "present": True},
    {"name": "Anne Echevine", "role": "échevine", "present": True},
    {"name": "Paul Directeur", "role": "directeur général", "present": True},
]


async def publish_decisions(hub: BenchHub, count: int = DECISIONS) -> float:
    """``count`` decisions decided in closed meetings and published, in meeting's database."""
    settings = hub.settings
    schema = settings.database_schema_for("meeting")
    engine = create_engine(settings.database_url_for("meeting"), schema=schema)
    await migrate(engine, "meeting", MIGRATIONS, schema=schema)
    sessions = session_factory(engine)
    rng = random.Random(5)
    started = time.perf_counter()
    first_day = datetime(2025, 1, 7, 18, tzinfo=UTC)
    sequence = 0
    for number in range(count // PER_MEETING):
        date = first_day + timedelta(days=3 * number)
        published_at = date + timedelta(days=2)
        async with sessions() as session, session.begin():
            meeting = Meeting(
                id=str(uuid.uuid4()),
                tenant=TENANT,
                meeting_config="college",
                date=date,
                place="Hôtel de ville",
                state=MeetingState.CLOSED,
                attendees=ATTENDEES,
                closed_at=date + timedelta(hours=3),
                first_published_at=published_at,  # as publish_decision sets it
                created_at=date - timedelta(days=10),
                updated_at=date + timedelta(hours=3),
            )
            session.add(meeting)
            await session.flush()  # no ORM relationship orders it before its items
            items = []
            for _ in range(PER_MEETING):
                sequence += 1
                items.append(_decided_item(rng, meeting, sequence, published_at))
            session.add_all(items)
            await session.flush()
            for item in items:
                await record_publication(session, item, meeting, published_at)
    await engine.dispose()
    return time.perf_counter() - started


def _decided_item(
    rng: random.Random, meeting: Meeting, sequence: int, published_at: datetime
) -> Item:
    name = rng.choice(["Dupont, Marie", "Lambert, Sophie", "Peeters, Jan", "Maes, Luc"])
    street = rng.choice(["rue des Guillemins", "quai de Rome", "boulevard d'Avroy"])
    title = f"Permis d'urbanisme de {name}: maison unifamiliale, {street} {sequence % 200 + 1}"
    return Item(
        id=str(uuid.uuid4()),
        tenant=TENANT,
        meeting_config="college",
        state=ItemState.ACCEPTED,
        title=title,
        proposing_service="urbanisme",
        category="urbanisme",
        description="Demande de permis d'urbanisme.",
        decision_text=f"Le collège octroie le permis sollicité par {name}.",
        meeting_id=meeting.id,
        decision=Decision.ACCEPTED,
        decision_number=format_decision_number("COL", meeting.date.year, sequence),
        decided_at=meeting.date,
        oversight_applies=False,
        publication_required=True,
        published_at=published_at,
        concerned_party_kind="person",
        concerned_party_name=name,
        origin="rest",
        creator="bench",
        created_at=meeting.date - timedelta(days=14),
        updated_at=published_at,
    )


async def walk_oparl(
    client: LeanClient, concurrency: int, seconds: float, seen: list[str] | None = None
) -> dict[str, Any]:
    """As many pages as ``concurrency`` clients get in ``seconds`` (their URLs into ``seen``)."""
    body = f"/oparl/v1/bodies/{TENANT}"
    latencies: list[float] = []
    kinds = {"next": 0, "random": 0}
    stop_at = time.perf_counter() + seconds
    rng = random.Random(3)

    async def get(url: str) -> dict[str, Any]:
        started = time.perf_counter()
        response = await client.get(url)
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
        if seen is not None:
            seen.append(url)
        page: dict[str, Any] = response.json()
        if not page["data"]:
            raise RuntimeError(f"GET {url}: an empty page")
        return page

    async def follow_next(worker: int) -> None:
        lists = ("papers", "agenda-items", "meetings")
        turn = worker
        while time.perf_counter() < stop_at:
            url: str | None = f"{body}/{lists[turn % len(lists)]}"
            while url and time.perf_counter() < stop_at:
                page = await get(url)
                kinds["next"] += 1
                url = page["links"].get("next")
            turn += 1

    async def random_pages() -> None:
        pages = DECISIONS // 20
        while time.perf_counter() < stop_at:
            kind = rng.choice(("papers", "agenda-items"))
            await get(f"{body}/{kind}?page={rng.randint(1, pages)}")
            kinds["random"] += 1

    started = time.perf_counter()
    await asyncio.gather(
        *(follow_next(n) for n in range(concurrency // 2)),
        *(random_pages() for _ in range(concurrency - concurrency // 2)),
    )
    elapsed = time.perf_counter() - started
    per_second = len(latencies) / elapsed
    p99 = percentile(latencies, 0.99)
    return {
        "decisions": DECISIONS,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "pages": len(latencies),
        "pages_following_next": kinds["next"],
        "pages_at_random_offsets": kinds["random"],
        "pages_per_second": round(per_second, 1),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": p99,
        "max_ms": round(max(latencies), 1),
        "target_pages_per_second": TARGET_PAGES_PER_SECOND,
        "throughput_met": per_second >= TARGET_PAGES_PER_SECOND,
    }


async def paced_oparl(
    client: LeanClient, urls: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    """``urls`` asked again in turn at a fixed ``rate``, each timed from when it was due.

    Timing from the due moment, not from the send, counts the wait of a request
    that could not leave on time (no coordinated omission). Requests start at
    their moment, at most ``PACED_IN_FLIGHT`` at once; the others wait on a
    semaphore, so that the client keeps no more connections than that.

    The client's heap is collected and frozen first: after the walk, a full
    garbage collection in this process paused it for up to ~100 ms, which
    counted as the server's latency for every request due meanwhile.
    """
    count = int(rate * seconds)
    latencies: list[float] = []
    slots = asyncio.Semaphore(PACED_IN_FLIGHT)

    async def one(url: str, due: float) -> None:
        async with slots:
            response = await client.get(url)
        latencies.append((time.perf_counter() - due) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")

    gc.collect()
    gc.freeze()
    first = time.perf_counter()
    requests = []
    for number in range(count):
        due = first + number / rate
        if (ahead := due - time.perf_counter()) > 0:
            await asyncio.sleep(ahead)
        requests.append(asyncio.create_task(one(urls[number % len(urls)], due)))
    await asyncio.gather(*requests)
    elapsed = time.perf_counter() - first
    gc.unfreeze()
    p99 = percentile(latencies, 0.99)
    return {
        "offered_pages_per_second": rate,
        "pages": count,
        "achieved_pages_per_second": round(count / elapsed, 1),
        "distinct_urls": len(set(urls)),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": p99,
        "max_ms": round(max(latencies), 1),
        "target_p99_ms": TARGET_PAGE_P99_MS,
        "met": p99 < TARGET_PAGE_P99_MS,
    }


def create_item_envelope(annex: bytes) -> tuple[bytes, bytes]:
    """A createItem envelope with a 1 MB annex, split where the title goes."""
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV})
    body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
    request = etree.SubElement(body, f"{{{WS4PM_NS}}}createItemRequest", nsmap={"pm": WS4PM_NS})
    etree.SubElement(request, "meetingConfigId").text = "college"
    etree.SubElement(request, "proposingGroupId").text = "urbanisme"
    data = etree.SubElement(request, "creationData")
    etree.SubElement(data, "title").text = TITLE_MARK
    etree.SubElement(data, "category").text = "urbanisme"
    etree.SubElement(data, "description").text = "Demande de permis d'urbanisme (benchmark)."
    annexes = etree.SubElement(data, "annexes")
    etree.SubElement(annexes, "title").text = "Plans"
    etree.SubElement(annexes, "filename").text = "plans.pdf"
    etree.SubElement(annexes, "file").text = pybase64.b64encode(annex).decode("ascii")
    before, after = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8").split(
        TITLE_MARK.encode()
    )
    return before, after


def one_megabyte_pdf() -> bytes:
    pdf = letter_pdf("Plans", "benchmark")
    # Padding after %%EOF keeps it a PDF readers open; the size is what is measured.
    return pdf + b"\n%" + b"0" * (ANNEX_BYTES - len(pdf) - 2)


async def create_items(
    client: LeanClient, count: int, concurrency: int, pids: dict[str, int]
) -> dict[str, Any]:
    annex = one_megabyte_pdf()
    before_title, after_title = create_item_envelope(annex)
    credentials = pybase64.b64encode(f"{WS4PM_USER}:{WS4PM_PASSWORD}".encode()).decode()
    headers = {
        "Content-Type": "text/xml; charset=utf-8",
        "SOAPAction": "createItem",
        "Authorization": f"Basic {credentials}",
    }
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def create(number: int) -> None:
        async with slots:  # each request's 1.3 MB built in its turn, not all at once
            content = before_title + f"Dossier benchmark {number}".encode() + after_title
            started = time.perf_counter()
            response = await client.post("/ws4pm", content, headers)
            latencies.append((time.perf_counter() - started) * 1000)
        answer = etree.fromstring(response.content)
        uid = answer.findtext(f".//{{{WS4PM_NS}}}createItemResponse/UID")
        if response.status_code != 200 or not uid:
            raise RuntimeError(f"createItem {number}: {response.status_code} {response.text[:300]}")

    await asyncio.gather(*(create(-n - 1) for n in range(concurrency)))  # warm-up
    latencies.clear()
    before = cpu_seconds(pids)
    started = time.perf_counter()
    await asyncio.gather(*(create(n) for n in range(count)))
    elapsed = time.perf_counter() - started
    per_second = count / elapsed
    return {
        "calls": count,
        "annex_bytes": len(annex),
        "request_bytes": len(before_title) + len(after_title) + 20,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "calls_per_second": round(per_second, 1),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "cpu_ms_per_call": cpu_ms_per_item(before, cpu_seconds(pids), count),
        "target_per_second": TARGET_CREATE_PER_SECOND,
        "met": per_second >= TARGET_CREATE_PER_SECOND,
    }


async def run_async(items: int, concurrency: int, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with bench_hub({TENANT: committed_tenant_file(TENANT)}) as hub:
        results["seed_seconds"] = round(await publish_decisions(hub), 1)
        await hub.start("meeting")
        pids = hub.pids()
        memory = PeakMemory(dict(pids))
        memory.start()
        pids["benchmark"] = os.getpid()
        async with LeanClient(hub.url("meeting")) as client:
            await walk_oparl(client, concurrency, 2.0)  # warm-up: connections, caches
            results["load_average_before"] = load_average()
            before = cpu_seconds(pids)
            walked: list[str] = []
            results["oparl"] = await walk_oparl(client, concurrency, seconds, walked)
            results["oparl"]["cpu_ms_per_page"] = cpu_ms_per_item(
                before, cpu_seconds(pids), results["oparl"]["pages"]
            )
            results["oparl_at_target_rate"] = await paced_oparl(
                client, walked, TARGET_PAGES_PER_SECOND, seconds
            )
            results["oparl_met"] = (
                results["oparl"]["throughput_met"] and results["oparl_at_target_rate"]["met"]
            )
            results["ws4pm_create_item"] = await create_items(client, items, concurrency, pids)
        results["peak_rss_mb"] = memory.stop()
        # The same walk with no page kept (HUB_OPARL_PAGE_CACHE_MB=0): every page rendered
        # from the database, as for the first crawler after a publication.
        stop_all([hub.running.pop("meeting")], None)
        hub.environment["HUB_OPARL_PAGE_CACHE_MB"] = "0"
        await hub.start("meeting")
        pids = hub.pids() | {"benchmark": os.getpid()}
        async with LeanClient(hub.url("meeting")) as client:
            await walk_oparl(client, concurrency, 2.0)
            before = cpu_seconds(pids)
            results["oparl_without_page_cache"] = await walk_oparl(client, concurrency, seconds)
            results["oparl_without_page_cache"]["cpu_ms_per_page"] = cpu_ms_per_item(
                before, cpu_seconds(pids), results["oparl_without_page_cache"]["pages"]
            )
        results["load_average_after"] = load_average()
    results["machine"] = machine()
    print(json.dumps(results, indent=2))
    return results


def run(items: int = 300, concurrency: int = 8, seconds: float = 20.0) -> dict[str, Any]:
    return run_client(run_async(items, concurrency, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=300, help="createItem calls timed")
    parser.add_argument("--concurrency", type=int, default=8, help="requests at once")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the OParl walk")
    args = parser.parse_args()
    results = run(args.items, args.concurrency, args.seconds)
    save_results("meeting", results)


if __name__ == "__main__":
    main()
