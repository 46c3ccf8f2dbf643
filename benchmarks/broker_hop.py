"""``make bench`` (j): one hop on the embedded broker, from a producer to a consumer, by fetch wait.

The embedded Tansu holds a fetch that finds nothing for the consumer's
``fetch_max_wait_ms`` and reads its storage again only after pauses within it
(``kernel.kafka.FETCH_MAX_WAIT_MS`` says what that costs the hub). For each
wait, on a fresh broker:

- **hop**: a producer (``kernel.kafka.make_producer``) sends ``--records``
  records of 2 kB at ``--rate`` per second to a 6-partition topic; one consumer
  of a group (``kernel.kafka.make_consumer``) reads them. Reported: p50, p90
  and p99 of the time from ``send`` (the record's timestamp) to ``getmany``
  returning it;
- **idle**: the same consumer with nothing to read for ``--idle-seconds``.
  Reported: the CPU milliseconds per second it costs this process and the
  broker (every idle consumer of the hub pays it, all night).

``python -m benchmarks.broker_hop`` runs this part alone
(var/bench/broker_hop.json); ``make bench BENCH_ARGS="--only hop"`` merges it
into var/bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import psutil

from benchmarks.common import machine, percentile, run_client, save_results
from kernel.kafka import EmbeddedBroker, ensure_topics, free_port, make_consumer, make_producer

TOPIC = "bench.hop"
WAITS_MS = (5, 10, 20, 100, 500)
#: Records not counted while the group settles and the connections open.
WARM_UP = 20


async def one_wait(wait_ms: int, records: int, rate: float, idle_seconds: float) -> dict[str, Any]:
    broker = EmbeddedBroker(free_port())
    broker.start()
    try:
        assert broker.process is not None
        broker_process = psutil.Process(broker.process.pid)
        await ensure_topics(broker.bootstrap_servers, {TOPIC: 6})
        consumer = make_consumer(
            broker.bootstrap_servers,
            f"bench-hop-{uuid.uuid4().hex[:6]}",
            [TOPIC],
            client_id="bench-hop",
            fetch_max_wait_ms=wait_ms,
        )
        producer = make_producer(broker.bootstrap_servers, client_id="bench-hop")
        await consumer.start()
        await producer.start()
        try:
            delays: list[float] = []
            total = WARM_UP + records

            async def read() -> None:
                while len(delays) < total:
                    fetched = await consumer.getmany(timeout_ms=200, max_records=500)
                    now_ms = time.time() * 1000
                    delays.extend(
                        now_ms - record.timestamp for batch in fetched.values() for record in batch
                    )

            reader = asyncio.create_task(read())
            await asyncio.sleep(1.0)  # the group's join and first fetches
            payload = bytes(range(256)) * 8
            started = time.monotonic()
            for number in range(total):
                # Paced on the clock, not by sleeping 1/rate: the loop's slack would add up.
                await asyncio.sleep(max(0.0, started + number / rate - time.monotonic()))
                await producer.send(TOPIC, payload, key=uuid.uuid4().hex.encode())
            await asyncio.wait_for(reader, timeout=30)
            measured = delays[WARM_UP:]

            await asyncio.sleep(1.0)  # nothing left to read: the consumer only waits now
            ours, theirs = psutil.Process(), broker_process
            before = (ours.cpu_times(), theirs.cpu_times())
            await asyncio.sleep(idle_seconds)
            after = (ours.cpu_times(), theirs.cpu_times())
        finally:
            await producer.stop()
            await consumer.stop()
    finally:
        broker.stop()

    def cpu_ms_per_second(start: Any, end: Any) -> float:
        spent = (end.user + end.system) - (start.user + start.system)
        return round(spent * 1000 / idle_seconds, 1)

    return {
        "fetch_max_wait_ms": wait_ms,
        "records": records,
        "rate_per_second": rate,
        "hop_p50_ms": round(percentile(measured, 0.50), 1),
        "hop_p90_ms": round(percentile(measured, 0.90), 1),
        "hop_p99_ms": round(percentile(measured, 0.99), 1),
        "idle_cpu_ms_per_second": {
            "consumer_process": cpu_ms_per_second(before[0], after[0]),
            "broker": cpu_ms_per_second(before[1], after[1]),
        },
    }


async def run_async(
    waits: tuple[int, ...], records: int, rate: float, idle_seconds: float
) -> dict[str, Any]:
    return {
        "waits": [await one_wait(wait, records, rate, idle_seconds) for wait in waits],
        "machine": machine(),
    }


def run(
    waits: tuple[int, ...] = WAITS_MS,
    records: int = 500,
    rate: float = 100.0,
    idle_seconds: float = 5.0,
) -> dict[str, Any]:
    return run_client(run_async(waits, records, rate, idle_seconds))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--waits",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=WAITS_MS,
        help="fetch_max_wait_ms values, comma-separated",
    )
    parser.add_argument("--records", type=int, default=500, help="timed records per wait")
    parser.add_argument("--rate", type=float, default=100.0, help="records per second")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle time measured")
    args = parser.parse_args()
    results = run(args.waits, args.records, args.rate, args.idle_seconds)
    save_results("broker_hop", results)
    for row in results["waits"]:
        print(row)


if __name__ == "__main__":
    main()
