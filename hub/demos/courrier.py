"""Courrier's demo: outgoing mail to the e-Box, and the incoming mail of a registry's day."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

from hub.demos import DemoRun, ServiceResult
from hub.traffic import outgoing_mail
from kernel.days import commune_day

FINAL_STATES = {"sent", "failed"}


async def courrier_demo(run: DemoRun) -> ServiceResult:
    """Delivered: an outgoing mail the e-Box accepted (``sent``)."""
    count, timeout = run.count, run.timeout
    result = ServiceResult()
    rng = random.Random()
    async with run.client("courrier", ["courrier:read", "courrier:write"]) as client:
        submit = run.task("courrier: sending outgoing mail", count)
        mail_ids: list[str] = []
        refused: list[str] = []  # outgoing mails the API refused: submitted, not delivered
        slots = asyncio.Semaphore(10)

        async def send(number: int) -> None:
            async with slots:
                response = await client.post(
                    "/v1/outgoing-mails:send", json=outgoing_mail(rng, number)
                )
            if response.status_code == 202:
                mail_ids.append(response.json()["id"])
            else:
                refused.append(f"{response.status_code}: {response.text[:200]}")
            run.advance(submit)

        async def register(number: int) -> None:
            # Incoming mail is part of a registry's day too; it has no external delivery.
            body = {
                "received_on": commune_day(datetime.now(UTC)).isoformat(),
                "sender": f"Citoyen {number}",
                "subject": "Demande d'information",
                "assigned_service": "Population",
            }
            async with slots:
                response = await client.post("/v1/incoming-mails", json=body)
            if response.status_code != 201:
                result.failed += 1  # not counted as submitted, but the run did not go well
                result.problems.append(
                    f"incoming mail: {response.status_code}: {response.text[:200]}"
                )

        await asyncio.gather(
            *(send(n) for n in range(count)), *(register(n) for n in range(count // 5))
        )
        result.submitted = len(mail_ids) + len(refused)
        result.failed += len(refused)
        result.problems[:0] = refused

        follow = run.task("courrier: waiting for e-Box receipts", len(mail_ids))
        pending = set(mail_ids)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            views = await asyncio.gather(
                *(client.get(f"/v1/outgoing-mails/{mail_id}") for mail_id in pending)
            )
            for view in (v.json() for v in views if v.status_code == 200):
                if view["state"] not in FINAL_STATES:
                    continue
                pending.discard(view["id"])
                if view["state"] == "sent":
                    result.delivered += 1
                    created = datetime.fromisoformat(view["created_at"])
                    updated = datetime.fromisoformat(view["updated_at"])
                    result.latencies_ms.append((updated - created).total_seconds() * 1000)
                else:
                    result.failed += 1
                    result.problems.append(
                        f"{view['registration_number']}: {view['failure_reason']}"
                    )
                run.advance(follow)
            if pending:
                await asyncio.sleep(0.2)
        # Counted, as every other service's demo counts them: a mail still sending at the
        # deadline was not delivered.
        result.failed += len(pending)
        result.problems.extend(
            f"mail {mail_id}: not sent within {timeout:.0f} s" for mail_id in pending
        )
    return result
