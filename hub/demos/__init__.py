"""``hub demo``'s parts, one module per service, and what they share.

Each service's demo is ``async (DemoRun) -> ServiceResult``: it plays the
people and the outside systems around the service (suppliers, clerks, the
college, the Region), through the service's API and the sandbox's control
endpoints only, and counts what reached its expected end within the run's
timeout. ``hub.demo`` runs them together and reports.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.progress import Progress, TaskID

from kernel.auth import issue_token
from kernel.settings import DEFAULT_PORTS, HubSettings

#: How often a request refused for a concurrent change is sent.
ATTEMPTS = 5
#: Below uvicorn's 5 s keep-alive, so no request goes out on a connection it just closed.
LIMITS = httpx.Limits(max_connections=20, keepalive_expiry=4.0)


@dataclass
class ServiceResult:
    submitted: int = 0
    delivered: int = 0
    failed: int = 0
    #: Documents refused as they should be (invalid invoices answered RE); None where
    #: a service has no such outcome.
    rejected: int | None = None
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def all_accounted_for(self) -> bool:
        """Everything submitted reached its expected end: delivered, or rightly rejected."""
        return self.failed == 0 and self.delivered + (self.rejected or 0) == self.submitted

    def percentile(self, share: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)

    def as_dict(self) -> dict[str, object]:
        outcome: dict[str, object] = {
            "submitted": self.submitted,
            "delivered": self.delivered,
        }
        if self.rejected is not None:
            outcome["rejected"] = self.rejected
        return outcome | {
            "failed": self.failed,
            "p50_ms": self.percentile(0.50),
            "p99_ms": self.percentile(0.99),
        }


@dataclass(frozen=True)
class DemoRun:
    """What every service's demo needs: where the hub is, for whom, how much, how long."""

    settings: HubSettings
    urls: Mapping[str, str]
    tenant: str
    count: int
    timeout: float
    progress: Progress | None

    def client(self, service: str, scopes: Sequence[str] = ()) -> httpx.AsyncClient:
        """A client of ``service``; with ``scopes``, bearing a token of the run's tenant."""
        headers = {}
        if scopes:
            token = issue_token(self.settings, self.tenant, list(scopes), subject="hub-demo")
            headers["Authorization"] = f"Bearer {token}"
        return httpx.AsyncClient(
            base_url=self.urls[service], headers=headers, timeout=30, limits=LIMITS
        )

    def task(self, description: str, total: int) -> TaskID | None:
        return self.progress.add_task(description, total=total) if self.progress else None

    def advance(self, task: TaskID | None, steps: int = 1) -> None:
        if self.progress and task is not None:
            self.progress.advance(task, steps)


def default_urls() -> dict[str, str]:
    return {name: f"http://127.0.0.1:{port}" for name, port in DEFAULT_PORTS.items()}


class StepFailed(Exception):
    """A request of the demo was refused: the document it was about cannot reach its end."""


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: object | None = None,
    *,
    again_on: str | None = None,
) -> dict[str, Any]:
    """The JSON answer of a request expected to succeed, or ``StepFailed`` saying what failed.

    ``again_on``: the Problem type (slug) of a 409 that stored nothing and asks to try
    again (a concurrent change of the same document); such a request is sent again.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = await client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise StepFailed(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if again_on and attempt < ATTEMPTS and _is_problem(response, 409, again_on):
            await asyncio.sleep(0.1 * attempt)
            continue
        if response.is_error:
            raise StepFailed(f"{method} {path}: {response.status_code} {response.text[:300]}")
        break
    answer: dict[str, Any] = response.json()
    return answer


def _is_problem(response: httpx.Response, status: int, slug: str) -> bool:
    if response.status_code != status:
        return False
    try:
        problem_type = str(response.json().get("type", ""))
    except ValueError:
        return False
    return problem_type.rsplit("/", 1)[-1] == slug


async def pages(
    client: httpx.AsyncClient, path: str, params: Mapping[str, str], limit: int = 200
) -> list[dict[str, Any]]:
    """Every item of a paged listing (``items``), each once.

    The listing may change between pages (new documents come first and push the
    others on): a document seen twice is kept once, and one pushed past the end
    is seen at the caller's next look.
    """
    found: dict[str, dict[str, Any]] = {}
    for offset in itertools.count(0, limit):
        query = {**params, "limit": str(limit), "offset": str(offset)}
        response = await client.get(path, params=query)
        if response.is_error:
            raise StepFailed(f"GET {path}: {response.status_code} {response.text[:300]}")
        items = response.json()["items"]
        found.update((item["id"], item) for item in items)
        if len(items) < limit:
            break
    return list(found.values())
