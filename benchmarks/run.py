"""``make bench``: the raw limit of Kafka + HTTP on this machine, and the hub against it.

One run, on this machine, of:
(a) raw limit: aiokafka consumes N send-request events and the gateway's HTTP
    client (``gateway.http``) posts each to the sandbox's e-Box REST
    publication, with no hub logic (no database, no routing, no receipts);
(b) hub throughput: N outgoing mails from the courrier API to "sent" (the
    e-Box receipt processed by courrier), through the outbox, Kafka, the
    gateway and the sandbox;
(c) hub latency at fixed offered rates (20 and 100 mails/s by default):
    p50/p99 from the API call to the ``courrier.outgoing_mail.sent.v1`` event;
(d) the peak RSS of every process during (b) and (c);
(e) invoice validation: the Python rules against the official XSLT
    (``benchmarks/invoices.py``; ``--only invoices`` runs it alone);
(f) invoices end to end, Peppol sandbox to the accounting connector
    (``benchmarks/factures_flow.py``, ``--only factures``);
(g) meeting: WS4PM createItem with a 1 MB annex, OParl list pages over 10,000
    published decisions (``benchmarks/meeting.py``, ``--only meeting``);
(h) urban: NOTICe notifications end to end, and urban's memory with 100,000
    files (``benchmarks/urban.py``, ``--only urban``);
(i) the gateway's HTTP client against httpx's own pool, on one target
    (``benchmarks/http_client.py``, ``--only http``);
(j) one hop on the embedded broker, producer to consumer, by the consumer's
    fetch wait, and what an idle consumer costs (``benchmarks/broker_hop.py``,
    ``--only hop``).

The processes are started exactly as ``hub up`` starts them (``benchmarks.common``), on the embedded
broker and SQLite (or ``DATABASE_URL``). Results: a table, and JSON in
``var/bench/results.json``; docs/benchmarks.md records them with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pybase64

from benchmarks import broker_hop, factures_flow, http_client, invoices, meeting, urban
from benchmarks.common import (
    EventWatcher,
    PeakMemory,
    bench_hub,
    cpu_ms_per_item,
    cpu_seconds,
    machine,
    percentile,
    run_client,
    save_results,
)
from benchmarks.lean_http import LeanClient
from contracts.envelope import from_record, headers_as_text, new_event, to_record
from contracts.events.courrier import OutgoingMailSendRequested, OutgoingMailSent, Recipient
from contracts.events.gateway import DeliveryReceipt
from gateway.connectors.ebox_rest import multipart_form_data
from gateway.http import outbound_transport
from hub.traffic import letter_pdf, outgoing_mail, random_niss
from kernel.kafka import ensure_topics, make_consumer, make_producer

SENT = OutgoingMailSent.TYPE
REQUESTED = OutgoingMailSendRequested.TYPE
RECEIPT = DeliveryReceipt.TYPE
TENANT = "62063"  # the REST tenant of config/tenants, as in the raw baseline
TENANT_FILE = """\
tenant: "{code}"
name: Benchmark commune {code}
connectors:
  ebox:
    type: ebox_rest
    base_url: ${{HUB_SANDBOX_URL}}/ebox/rest
    token_url: ${{HUB_SANDBOX_URL}}/ebox/oauth2/token
    client_id: hub-{code}
    client_secret: sandbox-secret-{code}
routes:
  - name: outgoing-mail-ebox
    event_type: courrier.outgoing_mail.send_requested.v1
    connector: ebox
"""


async def raw_limit(
    bootstrap: str, sandbox_url: str, count: int, concurrency: int
) -> dict[str, Any]:
    """aiokafka consuming ``count`` events and the gateway's client posting each: the
    ceiling of the machine for the same libraries."""
    topic = f"bench.raw.{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, {topic: 6})
    producer = make_producer(bootstrap, "bench-raw")
    await producer.start()
    rng = random.Random(7)
    pdf = letter_pdf("Benchmark", "raw")
    for number in range(count):
        data = OutgoingMailSendRequested(
            mail_id=f"raw-{number}",
            registration_number=f"S2026/{number:06d}",
            recipient=Recipient(kind="person", identifier=random_niss(rng)),
            subject="Benchmark",
            body_pdf_base64=pybase64.b64encode(pdf).decode(),
            body_pdf_md5=hashlib.md5(pdf).hexdigest(),
        )
        record = to_record(new_event(data, tenant=TENANT, subject=data.mail_id, source="urn:bench"))
        await producer.send(topic, record.value, key=record.key, headers=record.headers)
    await producer.flush()
    await producer.stop()

    async with httpx.AsyncClient(
        base_url=sandbox_url, timeout=30, transport=outbound_transport(concurrency)
    ) as http:
        token = (
            await http.post(
                "/ebox/oauth2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": f"hub-{TENANT}",
                    "client_secret": f"sandbox-secret-{TENANT}",
                },
            )
        ).json()["access_token"]
        consumer = make_consumer(bootstrap, f"raw-{uuid.uuid4()}", [topic], "bench-raw")
        await consumer.start()
        slots = asyncio.Semaphore(concurrency)

        async def post(value: bytes, headers: dict[str, str]) -> None:
            mail = from_record(headers, value).data_as(OutgoingMailSendRequested)
            letter = pybase64.b64decode(mail.body_pdf_base64)
            message = {
                "recipient": {"eboxType": "citizen", "eboxIdValue": mail.recipient.identifier},
                "subject": {"fr": mail.subject},
                "bodyMainContent": False,
                "replyAuthorized": False,
                "attachments": [
                    {
                        "httpPartName": "upfile1",
                        "mainContent": True,
                        "attachmentTitle": {"fr": "Lettre"},
                    }
                ],
            }
            # Encoded as the gateway encodes it, in one write (``multipart_form_data``).
            body, content_type = multipart_form_data(
                [
                    ("messageToPublish", None, json.dumps(message).encode(), "application/json"),
                    ("upfile1", "letter.pdf", letter, "application/pdf"),
                ]
            )
            async with slots:
                response = await http.post(
                    "/ebox/rest/publishMessage",
                    content=body,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Idempotency-Key": headers["ce_id"],
                        "Content-Type": content_type,
                    },
                )
            if response.status_code != 201:
                raise RuntimeError(
                    f"raw publication refused: {response.status_code} {response.text}"
                )

        started, done = time.perf_counter(), 0
        while done < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            records = [record for records in batch.values() for record in records]
            await asyncio.gather(
                *(post(r.value or b"", headers_as_text(r.headers)) for r in records)
            )
            done += len(records)
        elapsed = time.perf_counter() - started
        await consumer.stop()
    return {
        "events": count,
        "seconds": round(elapsed, 2),
        "events_per_second": round(count / elapsed, 1),
    }


async def submit(client: LeanClient, rng: random.Random, number: int) -> tuple[str, float]:
    """Send one outgoing mail; its id, and when it was sent (``time.time()``, as Kafka's clock)."""
    started = time.time()
    body = json.dumps(outgoing_mail(rng, number)).encode()
    response = await client.post("/v1/outgoing-mails:send", body, JSON_CONTENT)
    if response.status_code != 202:
        raise RuntimeError(f"send mail {number}: {response.status_code} {response.text[:300]}")
    return response.json()["id"], started


JSON_CONTENT = {"Content-Type": "application/json"}


#: The events of a mail's way, in order: each stage ends when its event is produced.
STAGES = (
    ("api_and_relay", REQUESTED),  # the API's transaction, then the outbox relay
    ("gateway_and_ebox", RECEIPT),  # Kafka to the gateway, the e-Box call, the receipt
    ("courrier_and_relay", SENT),  # Kafka to courrier, the receipt's transaction, the relay
)


def stage_latencies(watcher: EventWatcher, submitted: list[tuple[str, float]]) -> dict[str, Any]:
    """p50/p99 of each stage of the mails' way, from the Kafka timestamps of its events.

    The last stage, ``to_reader``, is the "sent" event's way to this
    benchmark's own consumer: part of the end-to-end figure, not of the hub.
    """
    stages: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    stages["to_reader"] = []
    for mail_id, started in submitted:
        begun = started
        for name, event_type in STAGES:
            ended = watcher.produced[event_type][mail_id]
            stages[name].append((ended - begun) * 1000)
            begun = ended
        stages["to_reader"].append((watcher.arrived_at(SENT, mail_id) - begun) * 1000)
    return {
        name: {"p50_ms": percentile(values, 0.50), "p99_ms": percentile(values, 0.99)}
        for name, values in stages.items()
    }


async def hub_throughput(client: LeanClient, watcher: EventWatcher, count: int) -> dict[str, Any]:
    rng, slots = random.Random(11), asyncio.Semaphore(32)

    async def one(number: int) -> tuple[str, float]:
        async with slots:
            return await submit(client, rng, number)

    started = time.perf_counter()
    submitted = await asyncio.gather(*(one(n) for n in range(count)))
    accepted = time.perf_counter() - started
    await watcher.wait_for(SENT, [mail_id for mail_id, _ in submitted], timeout=600)
    elapsed = max(watcher.arrived[SENT][mail_id] for mail_id, _ in submitted) - started
    return {
        "mails": count,
        "seconds": round(elapsed, 2),
        "mails_per_second": round(count / elapsed, 1),
        "api_accept_seconds": round(accepted, 2),
    }


async def hub_latency(
    client: LeanClient, watcher: EventWatcher, rate: float, seconds: float
) -> dict[str, Any]:
    """Offer ``rate`` mails/s for ``seconds``; latency = API call to the "sent" event."""
    rng, interval, tasks = random.Random(13), 1.0 / rate, []
    start = time.perf_counter()
    for number in range(int(rate * seconds)):
        delay = start + number * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(submit(client, rng, 100_000 + number)))
    submitted = await asyncio.gather(*tasks)
    achieved = len(submitted) / (time.perf_counter() - start)
    await watcher.wait_for(SENT, [mail_id for mail_id, _ in submitted], timeout=300)
    latencies = [(watcher.arrived_at(SENT, mail_id) - at) * 1000 for mail_id, at in submitted]
    # The same, ended when courrier's relay produced the "sent" event (its Kafka timestamp):
    # the hub's part alone, without the hop to this benchmark's reader.
    in_the_hub = [(watcher.produced[SENT][mail_id] - at) * 1000 for mail_id, at in submitted]
    return {
        "offered_per_second": rate,
        "achieved_per_second": round(achieved, 1),
        "mails": len(submitted),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": round(max(latencies), 1),
        "to_sent_produced": {
            "p50_ms": percentile(in_the_hub, 0.50),
            "p99_ms": percentile(in_the_hub, 0.99),
        },
        "stages": stage_latencies(watcher, submitted),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with bench_hub({TENANT: TENANT_FILE.format(code=TENANT)}) as hub:
        await hub.start("sandbox", "courrier", "gateway")
        pids = hub.pids()
        memory = PeakMemory(dict(pids))
        memory.start()
        pids["benchmark"] = os.getpid()
        results: dict[str, Any] = {"load_average_before": machine()["load_average"]}
        before = cpu_seconds(pids)
        results["raw_limit"] = await raw_limit(hub.bootstrap, hub.url("sandbox"), args.count, 8)
        results["raw_limit"]["cpu_ms_per_event"] = cpu_ms_per_item(
            before, cpu_seconds(pids), args.count
        )
        watcher = EventWatcher(
            hub.bootstrap, ["courrier.events", DeliveryReceipt.TOPIC], [REQUESTED, RECEIPT, SENT]
        )
        await watcher.start()
        async with LeanClient(
            hub.url("courrier"), headers=hub.token(TENANT, "courrier:read", "courrier:write")
        ) as client:
            await hub_latency(client, watcher, rate=20, seconds=2)  # warm-up: group joins, caches
            before = cpu_seconds(pids)
            results["hub_throughput"] = await hub_throughput(client, watcher, args.count)
            results["hub_throughput"]["cpu_ms_per_mail"] = cpu_ms_per_item(
                before, cpu_seconds(pids), args.count
            )
            results["hub_latency"] = [
                await hub_latency(client, watcher, rate, args.seconds) for rate in args.rates
            ]
        await watcher.stop()
        results["peak_rss_mb"] = memory.stop()
        results["hub_vs_raw"] = round(
            results["hub_throughput"]["mails_per_second"]
            / results["raw_limit"]["events_per_second"],
            2,
        )
        results["machine"] = machine()
        return results


#: The parts that run after the spine, each alone with ``--only``: name → (results key, run).
PARTS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "invoices": ("invoice_validation", invoices.run),  # (e)
    "factures": ("factures_flow", factures_flow.run),  # (f)
    "meeting": ("meeting", meeting.run),  # (g)
    "urban": ("urban", urban.run),  # (h)
    "http": ("http_client", http_client.run),  # (i)
    "hop": ("broker_hop", broker_hop.run),  # (j)
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="events for (a) and (b)")
    parser.add_argument(
        "--rates",
        type=lambda text: [float(rate) for rate in text.split(",")],
        default=[20.0, 100.0],
        help="offered mails/s for (c), comma-separated",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of (c)")
    parser.add_argument(
        "--only",
        choices=sorted(["spine", *PARTS]),
        help="run one part alone: spine is (a) to (d); the others are their modules "
        "(benchmarks.invoices, benchmarks.factures_flow, benchmarks.meeting, benchmarks.urban, "
        "benchmarks.http_client, benchmarks.broker_hop)",
    )
    args = parser.parse_args()
    out = Path("var/bench/results.json")
    # --only: the other parts keep their last results.
    results = json.loads(out.read_text()) if args.only and out.is_file() else {}
    if args.only in (None, "spine"):
        results.update(run_client(run(args)))
    for name, (key, run_part) in PARTS.items():
        if args.only in (None, name):
            results[key] = run_part()  # each starts and stops its own processes
    save_results("results", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
