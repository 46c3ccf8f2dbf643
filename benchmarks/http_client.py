"""``make bench`` (i): the gateway's HTTP client against httpx's own pool, on one target.

A target process on 127.0.0.1 (uvicorn on uvloop and httptools, as the hub's
processes serve) reads each request's body and answers a small JSON. The
client posts ``--requests`` bodies of 2 kB, ``concurrency`` at a time, with:

- ``httpcore``: ``httpx.AsyncClient`` with its default transport (httpcore's
  pool), at most ``2 x concurrency`` connections, as the gateway had it;
- ``gateway``: ``gateway.http.outbound_client``, the same limit, the client
  every connector now sends with (httpx over aiohttp's pool).

Reported per client and concurrency: requests/s and the CPU milliseconds per
request of the client process and of the target. The client runs on uvloop,
as the gateway does.

``python -m benchmarks.http_client`` runs this part alone
(var/bench/http_client.json); ``make bench BENCH_ARGS="--only http"`` merges it
into var/bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httpx
import psutil
from starlette.types import Receive, Scope, Send

from benchmarks.common import machine, run_client, save_results
from gateway.http import outbound_client
from kernel.kafka import free_port
from kernel.settings import REPOSITORY_ROOT

BODY = bytes(range(256)) * 8  # 2 kB, about an e-Box publication's JSON part
ANSWER = b'{"messageId": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "status": "ACCEPTED"}'
WARM_UP_REQUESTS = 200


async def target(scope: Scope, receive: Receive, send: Send) -> None:
    """The target: reads the body, answers ``ANSWER`` (plain ASGI: the target's cost stays low)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


def client_of(kind: str, max_connections: int) -> httpx.AsyncClient:
    if kind == "gateway":
        return outbound_client(max_connections, timeout=30)
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=max_connections), timeout=30)


async def measure(
    kind: str, url: str, server: psutil.Process, requests: int, concurrency: int
) -> dict[str, Any]:
    slots = asyncio.Semaphore(concurrency)
    async with client_of(kind, 2 * concurrency) as http:

        async def post(number: int) -> None:
            async with slots:
                answer = await http.post(
                    url, content=BODY, headers={"Idempotency-Key": f"bench-{number}"}
                )
                answer.raise_for_status()

        await asyncio.gather(*(post(n) for n in range(WARM_UP_REQUESTS)))
        client_before, server_before = time.process_time(), _cpu(server)
        started = time.monotonic()
        await asyncio.gather(*(post(n) for n in range(requests)))
        seconds = time.monotonic() - started
        client_cpu, server_cpu = time.process_time() - client_before, _cpu(server) - server_before
    return {
        "client": kind,
        "concurrency": concurrency,
        "requests": requests,
        "requests_per_second": round(requests / seconds, 1),
        "cpu_ms_per_request": {
            "client": round(1000 * client_cpu / requests, 3),
            "target": round(1000 * server_cpu / requests, 3),
        },
    }


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def run_async(requests: int, concurrencies: list[int]) -> dict[str, Any]:
    port = free_port()
    command = (
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.http_client:target",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
    )
    server = await asyncio.create_subprocess_exec(*command, cwd=REPOSITORY_ROOT)
    url = f"http://127.0.0.1:{port}/publication"
    try:
        await _wait_until_up(url)
        runs = [
            await measure(kind, url, psutil.Process(server.pid), requests, concurrency)
            for concurrency in concurrencies
            for kind in ("httpcore", "gateway")
        ]
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=10)
    results = {"runs": runs, "machine": machine()}
    print(json.dumps(results, indent=2))
    return results


async def _wait_until_up(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            try:
                await http.post(url, content=b"")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"the target at {url} did not start")


def run(requests: int = 4000, concurrencies: tuple[int, ...] = (8, 16)) -> dict[str, Any]:
    return run_client(run_async(requests, list(concurrencies)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000, help="per client and concurrency")
    parser.add_argument(
        "--concurrency",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=(8, 16),
        help="requests in flight, comma-separated",
    )
    args = parser.parse_args()
    results = run(args.requests, args.concurrency)
    save_results("http_client", results)


if __name__ == "__main__":
    main()
