"""``make bench``: the raw limit of Kafka + HTTP on this machine, and the hub against it.

One run, on this machine, of:
(a) raw limit: aiokafka consumes N send-request events and httpx posts each to
    the sandbox's e-Box REST publication, with no hub logic (no database, no
    routing, no receipts);
(b) hub throughput: N outgoing mails from the courrier API to "sent" (the
    e-Box receipt processed by courrier), through the outbox, Kafka, the
    gateway and the sandbox;
(c) hub latency at a fixed offered rate (100 mails/s by default): p50/p99
    from the API call to the ``courrier.outgoing_mail.sent.v1`` event;
(d) the peak RSS of every process during (b) and (c).

The processes are started exactly as ``hub up`` starts them, on the embedded
broker and SQLite (or ``DATABASE_URL``). Results: a table, and JSON in
``var/bench/results.json``; docs/benchmarks.md records them with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import platform
import random
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiokafka import AIOKafkaConsumer

from contracts.envelope import from_record, headers_as_text, new_event, to_record
from contracts.events.courrier import OutgoingMailSendRequested, OutgoingMailSent, Recipient
from hub.components import BY_NAME
from hub.supervisor import (
    Running,
    prepare_development_material,
    start_component,
    stop_all,
    wait_healthy,
)
from hub.traffic import letter_pdf, outgoing_mail, random_niss
from kernel.auth import issue_token
from kernel.kafka import (
    EmbeddedBroker,
    ensure_topics,
    free_port,
    make_consumer,
    make_producer,
    wait_for_broker,
)
from kernel.settings import HubSettings

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


@dataclass
class PeakMemory:
    """Samples the RSS of the hub's processes in a thread, keeping each one's peak."""

    processes: dict[str, int]
    peaks_mb: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._sample, daemon=True).start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        return {name: round(mb, 1) for name, mb in self.peaks_mb.items()}

    def _sample(self) -> None:
        handles = {name: psutil.Process(pid) for name, pid in self.processes.items()}
        while not self._stop.is_set():
            for name, handle in handles.items():
                try:
                    rss = handle.memory_info().rss / 1_048_576
                except psutil.Error:
                    continue
                self.peaks_mb[name] = max(self.peaks_mb.get(name, 0.0), rss)
            time.sleep(0.1)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) each process has used so far."""
    used = {}
    for name, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        used[name] = times.user + times.system
    return used


def cpu_ms_per_item(
    before: dict[str, float], after: dict[str, float], items: int
) -> dict[str, float]:
    return {name: round((after[name] - before[name]) * 1000 / items, 2) for name in before}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1) if ordered else 0.0


class SentWatcher:
    """Reads ``courrier.events`` and notes when each mail's "sent" event arrived."""

    def __init__(self, bootstrap: str) -> None:
        self.sent_at: dict[str, float] = {}
        self._bootstrap = bootstrap
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = make_consumer(
            self._bootstrap, f"bench-{uuid.uuid4()}", ["courrier.events"], "bench"
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    headers = headers_as_text(record.headers)
                    if headers.get("ce_type") == OutgoingMailSent.TYPE:
                        self.sent_at[headers["ce_subject"]] = now

    async def wait_for(self, mail_ids: list[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while any(mail_id not in self.sent_at for mail_id in mail_ids):
            if time.perf_counter() > deadline:
                missing = sum(mail_id not in self.sent_at for mail_id in mail_ids)
                raise TimeoutError(f"{missing} mails were not sent within {timeout}s")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._task.cancel()
        assert self._consumer is not None
        await self._consumer.stop()


async def raw_limit(
    bootstrap: str, sandbox_url: str, count: int, concurrency: int
) -> dict[str, Any]:
    """aiokafka consuming ``count`` events and httpx posting each: the ceiling of the machine."""
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
            body_pdf_base64=base64.b64encode(pdf).decode(),
            body_pdf_md5=hashlib.md5(pdf).hexdigest(),
        )
        record = to_record(new_event(data, tenant=TENANT, subject=data.mail_id, source="urn:bench"))
        await producer.send(topic, record.value, key=record.key, headers=record.headers)
    await producer.flush()
    await producer.stop()

    async with httpx.AsyncClient(
        base_url=sandbox_url, timeout=30, limits=httpx.Limits(max_connections=concurrency)
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
            letter = base64.b64decode(mail.body_pdf_base64)
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
            async with slots:
                response = await http.post(
                    "/ebox/rest/publishMessage",
                    files=[
                        (
                            "messageToPublish",
                            (None, json.dumps(message).encode(), "application/json"),
                        ),
                        ("upfile1", ("letter.pdf", letter, "application/pdf")),
                    ],
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Idempotency-Key": headers["ce_id"],
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


async def submit(client: httpx.AsyncClient, rng: random.Random, number: int) -> tuple[str, float]:
    started = time.perf_counter()
    response = await client.post("/v1/outgoing-mails:send", json=outgoing_mail(rng, number))
    response.raise_for_status()
    return response.json()["id"], started


async def hub_throughput(
    client: httpx.AsyncClient, watcher: SentWatcher, count: int
) -> dict[str, Any]:
    rng, slots = random.Random(11), asyncio.Semaphore(32)

    async def one(number: int) -> tuple[str, float]:
        async with slots:
            return await submit(client, rng, number)

    started = time.perf_counter()
    submitted = await asyncio.gather(*(one(n) for n in range(count)))
    accepted = time.perf_counter() - started
    await watcher.wait_for([mail_id for mail_id, _ in submitted], timeout=600)
    elapsed = max(watcher.sent_at[mail_id] for mail_id, _ in submitted) - started
    return {
        "mails": count,
        "seconds": round(elapsed, 2),
        "mails_per_second": round(count / elapsed, 1),
        "api_accept_seconds": round(accepted, 2),
    }


async def hub_latency(
    client: httpx.AsyncClient, watcher: SentWatcher, rate: float, seconds: float
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
    await watcher.wait_for([mail_id for mail_id, _ in submitted], timeout=300)
    latencies = [(watcher.sent_at[mail_id] - at) * 1000 for mail_id, at in submitted]
    return {
        "offered_per_second": rate,
        "achieved_per_second": round(achieved, 1),
        "mails": len(submitted),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": round(max(latencies), 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    tenants = workdir / "tenants"
    tenants.mkdir()
    (tenants / f"{TENANT}.yaml").write_text(TENANT_FILE.format(code=TENANT))
    settings = HubSettings(var_dir=workdir / "var", tenants_dir=tenants)
    prepare_development_material(settings)
    broker = EmbeddedBroker(port=free_port(), log_path=None)
    broker.start()
    running: list[Running] = []
    try:
        await wait_for_broker(broker.bootstrap_servers)
        await ensure_topics(broker.bootstrap_servers)
        ports = {name: free_port() for name in ("sandbox", "courrier", "gateway")}
        extra = {"HUB_SANDBOX_URL": f"http://127.0.0.1:{ports['sandbox']}"}
        for name in ("sandbox", "courrier", "gateway"):
            item = start_component(
                BY_NAME[name],
                settings,
                broker.bootstrap_servers,
                port=ports[name],
                extra_environment=extra,
            )
            running.append(item)
            await wait_healthy(item, "127.0.0.1")
        assert broker.process is not None
        pids = {r.component.name: r.process.pid for r in running} | {"broker": broker.process.pid}
        memory = PeakMemory(dict(pids))
        memory.start()
        pids["benchmark"] = os.getpid()
        results: dict[str, Any] = {}
        before = cpu_seconds(pids)
        results["raw_limit"] = await raw_limit(
            broker.bootstrap_servers, running[0].url, args.count, 8
        )
        results["raw_limit"]["cpu_ms_per_event"] = cpu_ms_per_item(
            before, cpu_seconds(pids), args.count
        )
        watcher = SentWatcher(broker.bootstrap_servers)
        await watcher.start()
        token = issue_token(settings, TENANT, ["courrier:read", "courrier:write"])
        async with httpx.AsyncClient(
            base_url=running[1].url,
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=64),
        ) as client:
            await hub_latency(client, watcher, rate=20, seconds=2)  # warm-up: group joins, caches
            before = cpu_seconds(pids)
            results["hub_throughput"] = await hub_throughput(client, watcher, args.count)
            results["hub_throughput"]["cpu_ms_per_mail"] = cpu_ms_per_item(
                before, cpu_seconds(pids), args.count
            )
            results["hub_latency"] = await hub_latency(client, watcher, args.rate, args.seconds)
        await watcher.stop()
        results["peak_rss_mb"] = memory.stop()
        results["hub_vs_raw"] = round(
            results["hub_throughput"]["mails_per_second"]
            / results["raw_limit"]["events_per_second"],
            2,
        )
        results["machine"] = {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "database": "sqlite" if not os.environ.get("DATABASE_URL") else "postgresql",
        }
        return results
    finally:
        stop_all(running, broker)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="events for (a) and (b)")
    parser.add_argument("--rate", type=float, default=100.0, help="offered mails/s for (c)")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of (c)")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    out = Path("var/bench/results.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
