"""A process's background jobs start again after an error, and /healthz tells meanwhile;
its /metrics read some gauges at scrape time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

import kernel.app
from kernel.app import BackgroundTask, create_app, refresh_at_scrape
from kernel.settings import HubSettings


class FlakyConsumer:
    """A job that fails at its first two starts (the broker is away), then runs."""

    def __init__(self) -> None:
        self.starts = 0
        self.running = asyncio.Event()
        self.may_fail_again = asyncio.Event()

    async def consume_events(self) -> None:
        self.starts += 1
        if self.starts == 1:
            raise ConnectionError("broker unreachable")
        if self.starts == 2:
            await self.may_fail_again.wait()  # the test looks at /healthz first
            raise ConnectionError("broker unreachable, again")
        self.running.set()
        await asyncio.Event().wait()  # consumes until cancelled


@asynccontextmanager
async def running(
    component: str,
    settings: HubSettings,
    startup: Callable[[FastAPI], Awaitable[list[BackgroundTask]]],
) -> AsyncIterator[httpx.AsyncClient]:
    """A process of ``component`` started (its lifespan run), and a client of its API."""
    app = create_app(component, settings, title="t", description="d", startup=startup)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield client


def restarts(job: str) -> float:
    value = REGISTRY.get_sample_value(
        "hub_background_job_restarts_total", {"component": "flaky", "job": job}
    )
    return value or 0.0


async def test_a_job_that_stops_on_an_error_starts_again_and_health_says_so(
    hub_settings: HubSettings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(kernel.app, "FIRST_RESTART_DELAY", 0.05)
    consumer = FlakyConsumer()
    restarted_before = restarts("flaky:consume_events")

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        return [consumer.consume_events]

    with caplog.at_level(logging.ERROR, logger="kernel.app"):
        async with running("flaky", hub_settings, startup) as client:
            await asyncio.sleep(0.01)  # the first start has failed; the restart waits 50 ms
            down = await client.get("/healthz")
            assert down.status_code == 503
            assert down.json() == {
                "status": "degraded",
                "component": "flaky",
                "restarting": {"flaky:consume_events": "ConnectionError"},
            }

            await asyncio.sleep(0.1)  # started again: running (the second start)
            assert consumer.starts == 2
            assert (await client.get("/healthz")).json() == {"status": "ok", "component": "flaky"}

            consumer.may_fail_again.set()  # fails again: waits twice as long, then runs
            await asyncio.wait_for(consumer.running.wait(), timeout=2)
            assert consumer.starts == 3
            assert (await client.get("/healthz")).status_code == 200

    assert restarts("flaky:consume_events") - restarted_before == 2
    assert [r.getMessage() for r in caplog.records] == [
        "background job flaky:consume_events stopped; starting it again in 0.05 s",
        "background job flaky:consume_events stopped; starting it again in 0.1 s",
    ]


async def test_a_job_that_ends_on_purpose_is_not_started_again(
    hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel.app, "FIRST_RESTART_DELAY", 0.01)
    runs: list[str] = []

    async def nothing_to_consume() -> None:  # e.g. a gateway with no routes
        runs.append("ran")

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        return [nothing_to_consume]

    async with running("idle", hub_settings, startup) as client:
        await asyncio.sleep(0.05)
        assert (await client.get("/healthz")).status_code == 200
    assert runs == ["ran"]


async def test_metrics_read_at_scrape_time_and_a_failing_read_spares_the_others(
    hub_settings: HubSettings, caplog: pytest.LogCaptureFixture
) -> None:
    scrapes: list[str] = []

    async def count_scrapes() -> None:
        scrapes.append("read")

    async def database_away() -> None:
        raise ConnectionError("database away")

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        refresh_at_scrape(app, database_away)
        refresh_at_scrape(app, count_scrapes)
        return []

    with caplog.at_level(logging.WARNING, logger="kernel.app"):
        async with running("scraped", hub_settings, startup) as client:
            first, second = await client.get("/metrics"), await client.get("/metrics")
    assert (first.status_code, second.status_code) == (200, 200)
    assert "hub_http_requests_total" in second.text
    assert scrapes == ["read", "read"]
    assert [r.getMessage() for r in caplog.records] == [
        "scraped could not read a metric for this scrape: ConnectionError('database away')"
    ] * 2


async def test_a_job_cancelled_from_within_is_started_again_not_lost(
    hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel.app, "FIRST_RESTART_DELAY", 0.01)
    starts: list[str] = []
    running_again = asyncio.Event()

    async def consume_events() -> None:
        starts.append("start")
        if len(starts) == 1:
            raise asyncio.CancelledError  # as a client library does when its connection drops
        running_again.set()
        await asyncio.Event().wait()

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        return [consume_events]

    async with running("flaky", hub_settings, startup) as client:
        await asyncio.wait_for(running_again.wait(), timeout=2)
        assert (await client.get("/healthz")).status_code == 200
    assert starts == ["start", "start"]


async def test_a_scrape_waits_for_a_refresh_only_so_long(
    hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kernel.app, "SCRAPE_REFRESH_SECONDS", 0.05)

    async def database_not_answering() -> None:
        await asyncio.Event().wait()

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        refresh_at_scrape(app, database_not_answering)
        return []

    with caplog.at_level(logging.WARNING, logger="kernel.app"):
        async with running("scraped", hub_settings, startup) as client:
            scrape = await asyncio.wait_for(client.get("/metrics"), timeout=5)
    assert scrape.status_code == 200 and "hub_http_requests_total" in scrape.text
    assert "TimeoutError" in caplog.text


async def test_two_jobs_of_one_name_stop_the_start(hub_settings: HubSettings) -> None:
    def poller() -> BackgroundTask:
        async def poll() -> None:
            await asyncio.Event().wait()

        return poll

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        return [poller(), poller()]  # e.g. one per source, from one factory

    with pytest.raises(ValueError, match="two background jobs of one name: twice:poll"):
        async with running("twice", hub_settings, startup):
            pass


async def test_a_second_start_of_one_app_reads_its_metrics_once_per_scrape(
    hub_settings: HubSettings,
) -> None:
    reads: list[int] = []

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        start = len(reads)  # which start registered the refresh

        async def read_backlog() -> None:
            reads.append(start)

        refresh_at_scrape(app, read_backlog)
        return []

    app = create_app("restarted", hub_settings, title="t", description="d", startup=startup)
    transport = httpx.ASGITransport(app=app)
    for _ in range(2):
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            assert (await client.get("/metrics")).status_code == 200
    assert reads == [0, 1]  # the second scrape ran only the second start's refresh
