"""When each outside source was last polled without failing, and how many polls failed in a
row since: published for alerts (``hub_inbound_last_success_timestamp_seconds``,
``hub_inbound_consecutive_poll_failures``) and shown to operators (``GET
/v1/inbound/sources``, the dashboard) behind the tenant wall. A source that kept failing
only grew a counter, and nobody could tell when it had last worked."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.api import SourceHealthView, inbound_router
from gateway.connectors.oversight_soap import Outcome
from gateway.connectors.peppol_ap import PeppolApSettings
from gateway.deliveries import MIGRATIONS
from gateway.inbound.notice import NoticeInbound, NoticeSource
from gateway.inbound.opinions import OpinionInbound
from gateway.inbound.oversight import OversightInbound
from gateway.inbound.peppol import InboxItem, PeppolInbound, inboxes_from
from kernel.auth import Caller, current_caller
from kernel.errors import install_problem_handlers
from tests.support.clock import Clock
from tests.support.databases import sqlite_sessions
from tests.unit.test_dashboard import PAGE, function_body
from tests.unit.test_notice_inbound import FakeNotice
from tests.unit.test_opinion_flow import FakePlatform
from tests.unit.test_oversight_inbound import FakeOversight
from tests.unit.test_peppol_inbound import LIEGE, PARTICIPANTS, FakeInbox

#: Tenants no other test polls: the state and the metrics are the process's.
MONS, VERVIERS, VILVOORDE, NAMUR = "53053", "63079", "23088", "92094"
#: What the failing fakes say: the error's text, which no view may show.
SECRET = "refused by 10.0.0.7 for key s3cr3t"


def last_success(channel: str, source: str) -> float | None:
    labels = {"channel": channel, "source": source}
    return REGISTRY.get_sample_value("hub_inbound_last_success_timestamp_seconds", labels)


def in_a_row(channel: str, source: str) -> float | None:
    labels = {"channel": channel, "source": source}
    return REGISTRY.get_sample_value("hub_inbound_consecutive_poll_failures", labels)


def failures(channel: str, source: str) -> float:
    labels = {"channel": channel, "source": source}
    return REGISTRY.get_sample_value("hub_inbound_poll_failures_total", labels) or 0.0


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        yield sessions


class Switchable(FakeOversight):
    async def list_outcomes(self, since: int) -> tuple[list[Outcome], int]:
        if self.failing:
            raise httpx.ConnectError(SECRET)
        return await super().list_outcomes(since)


async def test_the_last_success_is_set_by_a_poll_that_works_only_and_failures_in_a_row_reset(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock()
    oversight = Switchable(NAMUR)
    inbound = OversightInbound(sessions=sessions, sources=[oversight], clock=clock)
    assert last_success("oversight", NAMUR) is None  # absent: never polled

    await inbound.poll_once()  # nothing new is a poll that worked all the same
    worked_at = clock.now.timestamp()
    assert last_success("oversight", NAMUR) == worked_at
    assert in_a_row("oversight", NAMUR) == 0

    oversight.failing = True
    before = failures("oversight", NAMUR)
    for _ in range(3):
        clock.advance(60)
        await inbound.poll_once()
    assert last_success("oversight", NAMUR) == worked_at  # not moved by the failed polls
    assert in_a_row("oversight", NAMUR) == 3
    assert failures("oversight", NAMUR) == before + 3

    oversight.failing = False
    oversight.decide("item-1")
    clock.advance(60)
    assert await inbound.poll_once() == 1
    assert last_success("oversight", NAMUR) == clock.now.timestamp()
    assert in_a_row("oversight", NAMUR) == 0

    # Counted again from the last poll that worked, as the operators' view says.
    last_worked, oversight.failing = clock.now, True
    clock.advance(60)
    await inbound.poll_once()
    assert in_a_row("oversight", NAMUR) == 1
    [shown] = (await operators_view({"gateway:read"}, NAMUR)).json()
    assert view(shown) == {
        "channel": "oversight",
        "source": NAMUR,
        "tenant": NAMUR,
        "last_success_at": last_worked,
        "last_failure_at": clock.now,
        "consecutive_failures": 1,
        "last_error": "ConnectError",
    }


async def test_each_adapter_sets_the_last_success_of_its_sources_and_counts_their_failures(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock()

    class Inbox(FakeInbox):
        name = account = "https://ap.health.test/verviers"
        failing = False

        async def list_new(self) -> tuple[list[InboxItem], int]:
            if self.failing:
                raise httpx.ConnectError(SECRET)
            return await super().list_new()

    class Notice(FakeNotice):
        failing = False

        async def list_page(
            self, instance_code: str, after: str | None, limit: int
        ) -> tuple[list[str], str | None]:
            if self.failing:
                raise httpx.ConnectError(SECRET)
            return await super().list_page(instance_code, after, limit)

    class Platform(FakePlatform):
        failing = False

        async def list_new(self) -> list[dict[str, Any]]:
            if self.failing:
                raise httpx.ConnectError(SECRET)
            return await super().list_new()

    inbox, notice, platform = Inbox(), Notice(), Platform(VERVIERS, answers=[])
    inbox.drop("m1", LIEGE)
    adapters = (
        PeppolInbound(sessions=sessions, inboxes=[inbox], participants=PARTICIPANTS, clock=clock),
        NoticeInbound(
            sessions=sessions,
            sources=[NoticeSource(notice, ("NOTICE-63079", "NOTICE-HEALTH"))],
            instances={"NOTICE-63079": VERVIERS},
            clock=clock,
        ),
        OpinionInbound(sessions=sessions, accounts=[platform], clock=clock),
    )
    sources = [("peppol", inbox.name), ("notice", "NOTICE-63079"), ("opinion", VERVIERS)]

    for adapter in adapters:
        await adapter.poll_once()
    worked_at = clock.now.timestamp()
    assert [last_success(*source) for source in sources] == [worked_at] * 3
    assert [in_a_row(*source) for source in sources] == [0] * 3

    inbox.failing = notice.failing = platform.failing = True
    clock.advance(60)
    for adapter in adapters:
        await adapter.poll_once()
    assert [last_success(*source) for source in sources] == [worked_at] * 3
    assert [in_a_row(*source) for source in sources] == [1] * 3

    inbox.failing = notice.failing = platform.failing = False
    clock.advance(60)
    for adapter in adapters:
        await adapter.poll_once()
    assert [last_success(*source) for source in sources] == [clock.now.timestamp()] * 3
    assert [in_a_row(*source) for source in sources] == [0] * 3
    # A NOTICe instance no tenant names is no tenant's source, as the access point is.
    listed = (await operators_view({"gateway:read", "gateway:unroutable"}, VERVIERS)).json()
    tenants = {(i["channel"], i["source"]): i["tenant"] for i in listed}
    assert (
        tenants.items()
        >= {
            ("peppol", inbox.name): None,
            ("notice", "NOTICE-63079"): VERVIERS,
            ("notice", "NOTICE-HEALTH"): None,
            ("opinion", VERVIERS): VERVIERS,
        }.items()
    )


def view(item: dict[str, Any]) -> dict[str, Any]:
    """An item of the listing, its times read back."""
    return SourceHealthView.model_validate(item).model_dump()


async def operators_view(scopes: set[str], tenant: str = MONS) -> httpx.Response:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(inbound_router())
    app.dependency_overrides[current_caller] = lambda: Caller(
        tenant=tenant, scopes=frozenset(scopes), subject="operator"
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://gateway"
    ) as client:
        return await client.get("/v1/inbound/sources")


async def test_the_operators_see_their_tenants_sources_and_the_shared_ones_with_their_scope(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock()
    mons = FakeOversight(MONS)
    vilvoorde = Switchable(VILVOORDE)
    vilvoorde.failing = True
    await OversightInbound(sessions=sessions, sources=[mons, vilvoorde], clock=clock).poll_once()

    class Away(FakeInbox):
        name = account = "https://ap.health.test/shared"

        async def list_new(self) -> tuple[list[InboxItem], int]:
            raise httpx.ConnectError(SECRET)

    failed_at = clock.now
    await PeppolInbound(
        sessions=sessions, inboxes=[Away()], participants=PARTICIPANTS, clock=clock
    ).poll_once()

    tenants = await operators_view({"gateway:read"})
    hub = await operators_view({"gateway:read", "gateway:unroutable"})

    assert tenants.status_code == hub.status_code == 200
    # Only the caller's tenant's sources, whatever other tests left in the process.
    assert {item["tenant"] for item in tenants.json()} == {MONS}
    assert [view(i) for i in tenants.json() if i["source"] == MONS] == [
        {
            "channel": "oversight",
            "source": MONS,
            "tenant": MONS,
            "last_success_at": clock.now,
            "last_failure_at": None,
            "consecutive_failures": 0,
            "last_error": None,
        }
    ]
    # The hub's operators also see the access point, which is no single tenant's; neither
    # sees another tenant's failing account.
    assert {item["tenant"] for item in hub.json()} == {MONS, None}
    [shared] = [item for item in hub.json() if item["source"] == Away.name]
    assert shared["channel"] == "peppol" and shared["last_success_at"] is None
    assert (shared["consecutive_failures"], shared["last_error"]) == (1, "ConnectError")
    assert view(shared)["last_failure_at"] == failed_at
    assert SECRET not in hub.text and VILVOORDE not in hub.text + tenants.text
    assert VILVOORDE in (await operators_view({"gateway:read"}, VILVOORDE)).text


async def test_the_sources_are_refused_without_the_read_scope() -> None:
    answer = await operators_view({"gateway:operate", "gateway:unroutable"})

    assert answer.status_code == 403
    assert "gateway:read" in answer.text


def test_the_dashboard_shows_the_sources_the_api_gives() -> None:
    refresh = function_body("refresh")
    assert 'await api("/v1/inbound/sources")' in refresh
    assert 'fill("sources", sources, (r, h) =>' in refresh
    assert '<table id="sources">' in PAGE
    shown = set(re.findall(r"\bh\.(\w+)", PAGE))
    assert {"last_success_at", "consecutive_failures", "last_error"} <= shown
    assert shown <= set(SourceHealthView.model_fields)


async def test_two_accounts_at_one_access_point_have_their_own_health(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    url = "https://ap.health.test/two-accounts"
    settings = [
        PeppolApSettings(type="peppol_ap", base_url=url, api_key=SecretStr(key))
        for key in ("revoked-key", "working-key", "working-key")
    ]
    lone = PeppolApSettings(
        type="peppol_ap", base_url="https://ap.health.test/lone", api_key=SecretStr("k")
    )
    async with httpx.AsyncClient() as http:
        revoked, working, alone = inboxes_from([*settings, lone], http)
    # One source per account; a lone account keeps its URL; no key in a label.
    assert revoked.name == working.name == url
    assert revoked.account != working.account
    assert revoked.account.startswith(f"{url} (key ") and "revoked" not in revoked.account
    assert alone.account == "https://ap.health.test/lone"

    class Inbox(FakeInbox):
        name = url

        def __init__(self, account: str, failing: bool) -> None:
            super().__init__()
            self.account, self.failing = account, failing

        async def list_new(self) -> tuple[list[InboxItem], int]:
            if self.failing:
                raise httpx.ConnectError(SECRET)
            return await super().list_new()

    inbound = PeppolInbound(
        sessions=sessions,
        inboxes=[Inbox(revoked.account, True), Inbox(working.account, False)],
        participants=PARTICIPANTS,
    )
    for _ in range(2):
        await inbound.poll_once()

    # The working account does not hide the revoked one: its failures stay in a row.
    assert in_a_row("peppol", revoked.account) == 2
    assert last_success("peppol", revoked.account) is None
    assert in_a_row("peppol", working.account) == 0
