"""The sandbox and a gateway served in the test's event loop, with their own tenants.

Each use gets random tenant codes, Peppol participants and access point
account, a private var directory (the Stésud drop directory of both lives
under it) and its own consumer group, so tests sharing the session's broker
never see each other's documents.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer

from contracts.envelope import CloudEvent, EnvelopeError, from_record, headers_as_text
from gateway.main import GatewayOptions
from gateway.main import build_app as build_gateway
from kernel.auth import issue_token
from kernel.settings import HubSettings
from sandbox.app import build_app as build_sandbox
from sandbox.recorder import Recorder
from tests.support.groups import group_at_end
from tests.support.servers import serving

T = TypeVar("T")
TENANT_FILE = """\
tenant: "{code}"
name: Test commune {code}
peppol:
  participant: "{participant}"
  access_point: peppol
connectors:
  peppol:
    type: peppol_ap
    base_url: {sandbox}/peppol-ap/v1
    api_key: sandbox-ap-key-{account}
    timeout_seconds: 5
  accounting:
{accounting}
routes:
  - name: approved-invoice-accounting
    event_type: factures.invoice.approved.v1
    connector: accounting
  - name: invoice-response-peppol
    event_type: factures.invoice_response.requested.v1
    connector: peppol
retry:
  max_attempts: 30
  base_delay_seconds: 0.1
  max_delay_seconds: 0.5
"""
INFORIUS = """\
    type: inforius
    base_url: {sandbox}/inforius/api/v2
    api_key: sandbox-inforius-{code}
    timeout_seconds: 5"""
STESUD = """\
    type: stesud"""


def random_participant() -> str:
    return f"0208:0{random.randrange(100_000_000, 999_999_999)}"


@dataclass
class GatewayHub:
    settings: HubSettings
    sandbox: str
    gateway: str
    account: str
    #: Books with Inforius.
    inforius_tenant: str
    #: Books with Stésud.
    stesud_tenant: str
    #: tenant code → Peppol participant
    participants: dict[str, str]

    def token(self, tenant: str, *scopes: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue_token(self.settings, tenant, list(scopes))}


@asynccontextmanager
async def gateway_hub(
    tmp_path: Path,
    bootstrap: str,
    database: tuple[str, str | None],
    corpus_dir: Path,
) -> AsyncIterator[GatewayHub]:
    inforius_tenant, stesud_tenant = (str(code) for code in random.sample(range(90000, 99999), 2))
    account = "t" + uuid.uuid4().hex[:10]
    tenants_dir = tmp_path / "tenants"
    tenants_dir.mkdir()
    settings = HubSettings(var_dir=tmp_path / "var", tenants_dir=tenants_dir, corpus_dir=corpus_dir)
    participants = {inforius_tenant: random_participant(), stesud_tenant: random_participant()}
    async with serving(build_sandbox(settings, Recorder())) as sandbox:
        for code, accounting in ((inforius_tenant, INFORIUS), (stesud_tenant, STESUD)):
            (tenants_dir / f"{code}.yaml").write_text(
                TENANT_FILE.format(
                    code=code,
                    participant=participants[code],
                    sandbox=sandbox,
                    account=account,
                    accounting=accounting.format(sandbox=sandbox, code=code),
                ),
                encoding="utf-8",
            )
        url, schema = database
        options = GatewayOptions(
            database_url=url,
            database_schema=schema,
            kafka_bootstrap_servers=bootstrap,
            group_id=await group_at_end(bootstrap, "gateway"),
            peppol_poll_seconds=0.1,
        )
        async with serving(build_gateway(settings, options)) as gateway:
            yield GatewayHub(
                settings, sandbox, gateway, account, inforius_tenant, stesud_tenant, participants
            )


async def events_on(
    bootstrap: str,
    topic: str,
    wanted: Callable[[CloudEvent], bool],
    *,
    at_least: int,
    settle_seconds: float = 1.0,
    timeout: float = 30.0,
) -> list[CloudEvent]:
    """Every wanted event of ``topic`` (once per CloudEvent id), read until ``at_least`` came
    and no more for a while.

    Kafka may hold an event twice (a relay crash between publishing and marking it
    sent, a producer retry) and this reader may read a record twice (its group
    rebalanced under a loaded machine and, with nothing committed, starts over):
    consumers deduplicate by the id, and so does this helper.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"t-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[CloudEvent] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    try:
                        event = from_record(headers_as_text(record.headers), record.value or b"")
                    except EnvelopeError:
                        continue
                    if wanted(event) and all(event.id != seen.id for seen in found):
                        found.append(event)
                        quiet_since = time.monotonic()
            if len(found) >= at_least and time.monotonic() - quiet_since > settle_seconds:
                break
    finally:
        await consumer.stop()
    return found


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 20.0, pause: float = 0.1
) -> T:
    """Await ``check()`` until it returns something truthy (or the last answer at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(pause)


async def sandbox_inbox(sandbox: str) -> dict[str, Any]:
    """The sandbox access point's messages and answers (``GET /_sandbox/peppol/inbox``)."""
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{sandbox}/_sandbox/peppol/inbox")
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body
