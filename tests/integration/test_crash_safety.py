"""Kill the gateway (SIGKILL) in the middle of 1,000 outgoing mails: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import httpx
import pytest

from hub.traffic import outgoing_mail
from tests.integration.test_end_to_end import sandbox_receptions
from tests.support.hub_processes import HubProcesses, hub_processes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAILS = 1000


async def submit(hub: HubProcesses, tenant: str, count: int, mail_ids: list[str]) -> None:
    rng = random.Random(tenant)
    slots = asyncio.Semaphore(8)
    async with hub.courrier(tenant) as client:

        async def one(number: int) -> None:
            async with slots:
                response = await client.post(
                    "/v1/outgoing-mails:send", json=outgoing_mail(rng, number)
                )
            assert response.status_code == 202, response.text
            mail_ids.append(response.json()["id"])

        await asyncio.gather(*(one(n) for n in range(count)))


async def count_received(hub: HubProcesses) -> int:
    async with httpx.AsyncClient(base_url=hub.url("sandbox")) as client:
        return int((await client.get("/_sandbox/received")).json()["count"])


async def sandbox_attempts(hub: HubProcesses, service: str) -> int:
    async with httpx.AsyncClient(base_url=hub.url("sandbox")) as client:
        answer = await client.get("/_sandbox/attempts", params={"service": service})
    return sum(int(item["attempts"]) for item in answer.json()["items"])


async def final_mails(
    hub: HubProcesses, tenant: str, mail_ids: list[str]
) -> list[dict[str, object]]:
    async with hub.courrier(tenant) as client:
        views = []
        for start in range(0, len(mail_ids), 50):
            chunk = mail_ids[start : start + 50]
            answers = await asyncio.gather(*(client.get(f"/v1/outgoing-mails/{i}") for i in chunk))
            views.extend(answer.json() for answer in answers)
        return views


@pytest.mark.parametrize("error_rate", [0.0, 0.3], ids=["healthy-target", "target-failing-30pct"])
async def test_gateway_killed_mid_flight_delivers_every_mail_exactly_once(
    tmp_path: Path, kafka_bootstrap: str, database_url: str | None, error_rate: float
) -> None:
    async with hub_processes(tmp_path, kafka_bootstrap, database_url) as hub:
        if error_rate:
            async with httpx.AsyncClient(base_url=hub.url("sandbox")) as sandbox:
                await sandbox.put("/_sandbox/faults/*", json={"error_rate": error_rate})
        ids: dict[str, list[str]] = {hub.soap_tenant: [], hub.rest_tenant: []}
        submitting = asyncio.gather(
            *(submit(hub, tenant, MAILS // 2, ids[tenant]) for tenant in ids)
        )

        # Kill once a quarter of the mails reached the e-Box, with many still in flight.
        deadline = time.monotonic() + 120
        while await count_received(hub) < MAILS // 4:
            assert time.monotonic() < deadline, "deliveries did not start"
            await asyncio.sleep(0.05)
        hub.kill("gateway")
        await hub.start("gateway")
        await submitting

        deadline = time.monotonic() + 300
        while True:
            views = [v for tenant in ids for v in await final_mails(hub, tenant, ids[tenant])]
            if all(view["state"] == "sent" for view in views) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        assert [v for v in views if v["state"] != "sent"] == []

        receptions = await sandbox_receptions(hub, "ebox_soap") + await sandbox_receptions(
            hub, "ebox_rest"
        )
        # One publication per mail: every idempotency key was published exactly once,
        # however many times it arrived (re-sent after the kill, or after a 503).
        assert len(receptions) == MAILS
        assert len({r["idempotency_key"] for r in receptions}) == MAILS
        published = sorted(str(r["answer_id"]) for r in receptions)
        assert published == sorted(str(v["ebox_message_id"]) for v in views)
        # Every request is an attempt, the ones answered 503 included; arrivals count
        # only those processed. With a failing target, the 503s were retried.
        arrivals = sum(int(str(r["arrivals"])) for r in receptions)
        attempts = await sandbox_attempts(hub, "ebox_soap") + await sandbox_attempts(
            hub, "ebox_rest"
        )
        assert attempts >= arrivals >= MAILS
        if error_rate:
            assert attempts > arrivals
