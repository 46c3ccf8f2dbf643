"""``hub demo``: realistic traffic through a running hub, and what became of it.

Each service's part lives in ``hub.demos.<service>``; this module runs them
together against ``hub up``'s ports and reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.demos import DemoRun, ServiceResult, default_urls
from hub.demos.courrier import courrier_demo
from hub.demos.factures import factures_demo
from hub.demos.meeting import meeting_demo
from hub.demos.urban import urban_demo
from kernel.settings import HubSettings

__all__ = ["DEMOS", "DemoRun", "ServiceResult", "print_table", "run_demo", "run_demos"]

DEMOS: dict[str, Callable[[DemoRun], Awaitable[ServiceResult]]] = {
    "courrier": courrier_demo,
    "factures": factures_demo,
    "meeting": meeting_demo,
    "urban": urban_demo,
}
#: Services whose documents may rightly be refused: their result always counts
#: ``rejected``, the hub reached or not (README's JSON shape).
REJECTING = frozenset({"factures"})


async def run_demos(
    run: DemoRun, services: tuple[str, ...] = tuple(DEMOS)
) -> dict[str, ServiceResult]:
    """The demos of ``services`` at once (tests call this inside their event loop)."""
    results = await asyncio.gather(*(_reported(name, run) for name in services))
    return dict(zip(services, results, strict=True))


async def _reported(name: str, run: DemoRun) -> ServiceResult:
    """A service's demo; one that could not reach the hub counts everything failed, so
    ``hub demo`` still prints its table (or JSON) and exits non-zero."""
    try:
        return await DEMOS[name](run)
    except httpx.HTTPError as exc:
        return ServiceResult(
            submitted=run.count,
            failed=run.count,
            rejected=0 if name in REJECTING else None,
            problems=[f"the hub could not be reached: {type(exc).__name__}: {exc}"],
        )


def run_demo(
    settings: HubSettings, *, count: int, timeout: float, tenant: str, show_progress: bool
) -> dict[str, ServiceResult]:
    """``hub demo``: every service's demo against the hub on ``hub up``'s ports."""

    def demo(progress: Progress | None) -> DemoRun:
        return DemoRun(settings, default_urls(), tenant, count, timeout, progress)

    if not show_progress:
        return asyncio.run(run_demos(demo(None)))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as progress:
        return asyncio.run(run_demos(demo(progress)))


def print_table(results: dict[str, ServiceResult]) -> None:
    console = Console()
    table = Table(title="hub demo: outcomes")
    columns = ("submitted", "delivered", "rejected", "failed", "p50_ms", "p99_ms")
    table.add_column("service")
    for column in columns:
        table.add_column(column.replace("_ms", " ms"), justify="right")
    for name, result in results.items():
        summary = result.as_dict()
        table.add_row(name, *(str(summary.get(key, "")) for key in columns))
    console.print(table)
    for name, result in results.items():
        for problem in result.problems[:10]:
            console.print(f"[yellow]{name}[/yellow]: {escape(problem)}")
