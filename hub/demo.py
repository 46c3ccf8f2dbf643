"""``hub demo``: realistic traffic through a running hub, and what became of it."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import date, datetime

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.traffic import outgoing_mail
from kernel.auth import issue_token
from kernel.settings import DEFAULT_PORTS, HubSettings

FINAL_STATES = {"sent", "failed"}


@dataclass
class ServiceResult:
    submitted: int = 0
    delivered: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def percentile(self, share: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)

    def as_dict(self) -> dict[str, object]:
        return {
            "submitted": self.submitted,
            "delivered": self.delivered,
            "failed": self.failed,
            "p50_ms": self.percentile(0.50),
            "p99_ms": self.percentile(0.99),
        }


async def _courrier_demo(
    settings: HubSettings, count: int, timeout: float, tenant: str, progress: Progress | None
) -> ServiceResult:
    base_url = f"http://127.0.0.1:{DEFAULT_PORTS['courrier']}"
    token = issue_token(settings, tenant, ["courrier:read", "courrier:write"], subject="hub-demo")
    result = ServiceResult()
    rng = random.Random()
    limits = httpx.Limits(max_connections=20)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=30, limits=limits
    ) as client:
        submit = (
            progress.add_task("courrier: sending outgoing mail", total=count) if progress else None
        )
        mail_ids: list[str] = []
        slots = asyncio.Semaphore(10)

        async def send(number: int) -> None:
            async with slots:
                response = await client.post(
                    "/v1/outgoing-mails:send", json=outgoing_mail(rng, number)
                )
            if response.status_code == 202:
                mail_ids.append(response.json()["id"])
            else:
                result.problems.append(f"{response.status_code}: {response.text[:200]}")
            if progress and submit is not None:
                progress.advance(submit)

        async def register(number: int) -> None:
            # Incoming mail is part of a registry's day too; it has no external delivery.
            body = {
                "received_on": date.today().isoformat(),
                "sender": f"Citoyen {number}",
                "subject": "Demande d'information",
                "assigned_service": "Population",
            }
            async with slots:
                await client.post("/v1/incoming-mails", json=body)

        await asyncio.gather(
            *(send(n) for n in range(count)), *(register(n) for n in range(count // 5))
        )
        result.submitted = len(mail_ids) + len(result.problems)

        follow = (
            progress.add_task("courrier: waiting for e-Box receipts", total=len(mail_ids))
            if progress
            else None
        )
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
                if progress and follow is not None:
                    progress.advance(follow)
            if pending:
                await asyncio.sleep(0.2)
    return result


def run_demo(
    settings: HubSettings, *, count: int, timeout: float, tenant: str, show_progress: bool
) -> dict[str, ServiceResult]:
    async def run(progress: Progress | None) -> dict[str, ServiceResult]:
        return {"courrier": await _courrier_demo(settings, count, timeout, tenant, progress)}

    if not show_progress:
        return asyncio.run(run(None))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as progress:
        return asyncio.run(run(progress))


def print_table(results: dict[str, ServiceResult]) -> None:
    console = Console()
    table = Table(title="hub demo: outcomes")
    for column in ("service", "submitted", "delivered", "failed", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "service" else "left")
    for name, result in results.items():
        summary = result.as_dict()
        table.add_row(
            name,
            *(
                str(summary[key])
                for key in ("submitted", "delivered", "failed", "p50_ms", "p99_ms")
            ),
        )
    console.print(table)
    for name, result in results.items():
        for problem in result.problems[:10]:
            console.print(f"[yellow]{name}[/yellow]: {problem}")
