"""What every ``make bench`` part shares: the hub's processes, what they cost, the machine.

- ``bench_hub``: an embedded broker and the components a part names, each
  started exactly as ``hub up`` starts it (``hub.supervisor.start_component``),
  with the part's own tenant files in a temporary var directory;
- ``PeakMemory``, ``cpu_seconds``, ``cpu_ms_per_item``: peak RSS and CPU time per
  process (psutil);
- ``EventWatcher``: when each event of some types arrived on Kafka, by subject;
- ``machine``: the machine and its load (the CPUs are shared), for every result.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import uvloop
from aiokafka import AIOKafkaConsumer

from contracts.envelope import headers_as_text
from hub.components import BY_NAME
from hub.supervisor import (
    Running,
    prepare_development_material,
    start_component,
    stop_all,
    wait_healthy,
)
from kernel.auth import issue_token
from kernel.kafka import EmbeddedBroker, ensure_topics, free_port, make_consumer, wait_for_broker
from kernel.settings import REPOSITORY_ROOT, HubSettings

T = TypeVar("T")


def run_client(main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark's client side on uvloop, the loop the hub's processes serve on.

    The client shares the machine's two cores with the processes it measures;
    on asyncio's default loop, sending a 1.3 MB createItem cost it more CPU
    than half of what the meeting process spent answering it. What it imported
    is frozen out of the garbage collector's sight first, as the hub's
    processes do (``hub.cli.FrozenAfterStartupServer``): a full collection of
    it stopped the client's loop for 74-100 ms, and the latencies it stamped
    with it.
    """
    gc.collect()
    gc.freeze()
    return uvloop.run(main)


#: uvicorn closes keep-alive connections idle for 5 s; a client that keeps them
#: longer sometimes reuses one just closed and gets a ReadError.
KEEP_ALIVE_SAFE_LIMITS = httpx.Limits(max_connections=64, keepalive_expiry=4.0)
COMMITTED_TENANTS = REPOSITORY_ROOT / "config" / "tenants"


def committed_tenant_file(code: str) -> str:
    """A tenant file of ``config/tenants`` as committed (its URLs follow ``HUB_SANDBOX_URL``,
    and the KSZ-BCSS's ``HUB_SANDBOX_TLS_URL``)."""
    return (COMMITTED_TENANTS / f"{code}.yaml").read_text()


@dataclass
class BenchHub:
    """A broker and the components a benchmark started, on free ports."""

    settings: HubSettings
    broker: EmbeddedBroker
    environment: dict[str, str]
    ports: dict[str, int]
    running: dict[str, Running] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    def url(self, component: str) -> str:
        return f"http://127.0.0.1:{self.ports[component]}"

    async def start(self, *components: str) -> None:
        """Start ``components`` in order, each healthy before the next."""
        for name in components:
            item = start_component(
                BY_NAME[name],
                self.settings,
                self.bootstrap,
                port=self.ports[name],
                extra_environment=self.environment,
            )
            self.running[name] = item
            await wait_healthy(item, "127.0.0.1")

    def pids(self) -> dict[str, int]:
        """The started components' and the broker's process ids, by name."""
        assert self.broker.process is not None
        started = {name: item.process.pid for name, item in self.running.items()}
        return started | {"broker": self.broker.process.pid}

    def token(self, tenant: str, *scopes: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue_token(self.settings, tenant, list(scopes))}


@asynccontextmanager
async def bench_hub(
    tenant_files: Mapping[str, str], environment: Mapping[str, str] | None = None
) -> AsyncIterator[BenchHub]:
    """A broker with the hub's topics; components start with ``BenchHub.start``.

    ``tenant_files``: tenant code → YAML; ``environment`` is added to every
    component's (``HUB_SANDBOX_URL`` points at the sandbox's port). Everything
    (processes, var directory) is gone when the block ends.
    """
    workdir = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    tenants = workdir / "tenants"
    tenants.mkdir()
    for code, text in tenant_files.items():
        (tenants / f"{code}.yaml").write_text(text)
    tls_port = free_port()  # the sandbox's TLS listener: not the port of a `hub up` beside
    settings = HubSettings(
        var_dir=workdir / "var",
        tenants_dir=tenants,
        sandbox_tls_port=tls_port,
    )
    prepare_development_material(settings)
    broker = EmbeddedBroker(port=free_port(), log_path=None)
    broker.start()
    ports = {name: free_port() for name in BY_NAME}
    extra = {"HUB_SANDBOX_URL": f"http://127.0.0.1:{ports['sandbox']}"} | dict(environment or {})
    hub = BenchHub(settings, broker, extra, ports)
    try:
        await wait_for_broker(broker.bootstrap_servers)
        await ensure_topics(broker.bootstrap_servers)
        yield hub
    finally:
        stop_all(list(hub.running.values()), broker)
        shutil.rmtree(workdir, ignore_errors=True)


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
    per_process = {name: round((after[name] - before[name]) * 1000 / items, 2) for name in before}
    return per_process | {"total": round(sum(per_process.values()), 2)}


def save_results(name: str, results: dict[str, Any]) -> Path:
    """Write a benchmark's results as ``var/bench/<name>.json``, where docs/benchmarks.md
    and ``benchmarks.run`` (which merges the parts) read them."""
    out = Path("var/bench") / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return out


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1) if ordered else 0.0


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: the CPUs are shared with other work."""
    return [round(value, 2) for value in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "database": "sqlite" if not os.environ.get("DATABASE_URL") else "postgresql",
        "load_average": load_average(),
    }


class EventWatcher:
    """Reads ``topics`` and notes when each event of ``types`` arrived, by type and subject.

    ``on_event(type, subject)``, if given, is called as each one arrives (a
    benchmark playing a clerk reacts to it there). ``produced`` keeps, beside
    each arrival, the record's Kafka timestamp (its producer's wall clock, in
    seconds): the stages of a flow are measured from it, free of this
    reader's own fetch waits.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Iterable[str],
        types: Iterable[str],
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.arrived: dict[str, dict[str, float]] = {event_type: {} for event_type in types}
        self.produced: dict[str, dict[str, float]] = {event_type: {} for event_type in types}
        self._bootstrap = bootstrap
        self._topics = list(topics)
        self._on_event = on_event
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._wall_clock_offset = time.time() - time.perf_counter()

    def arrived_at(self, event_type: str, subject: str) -> float:
        """When that event arrived, by the wall clock (``time.time()``), as Kafka's timestamps."""
        return self.arrived[event_type][subject] + self._wall_clock_offset

    async def start(self) -> None:
        self._consumer = make_consumer(
            self._bootstrap, f"bench-{uuid.uuid4()}", self._topics, "bench"
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
                    seen = self.arrived.get(headers.get("ce_type", ""))
                    if seen is None:
                        continue
                    subject = headers.get("ce_subject", "")
                    seen.setdefault(subject, now)
                    self.produced[headers["ce_type"]].setdefault(subject, record.timestamp / 1000)
                    if self._on_event is not None:
                        self._on_event(headers["ce_type"], subject)

    async def wait_for(self, event_type: str, subjects: Iterable[str], timeout: float) -> None:
        wanted = list(subjects)
        seen = self.arrived[event_type]
        deadline = time.perf_counter() + timeout
        while any(subject not in seen for subject in wanted):
            if self._task is not None and self._task.done():
                self._task.result()  # the reader failed: say why
            if time.perf_counter() > deadline:
                missing = sum(subject not in seen for subject in wanted)
                raise TimeoutError(f"{missing} {event_type} events did not come within {timeout}s")
            await asyncio.sleep(0.01)

    async def wait_count(self, event_type: str, count: int, timeout: float) -> None:
        seen = self.arrived[event_type]
        deadline = time.perf_counter() + timeout
        while len(seen) < count:
            if self._task is not None and self._task.done():
                self._task.result()
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"{len(seen)}/{count} {event_type} events came within {timeout}s"
                )
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()
