"""Shared fixtures: one embedded broker per session, SQLite and PostgreSQL databases,
the gateway's HTTP client, a running gateway with its sandbox.

PostgreSQL: ``HUB_TEST_POSTGRES_URL`` names it (``.ci/run`` sets it and
``HUB_REQUIRE_POSTGRES=1``, which turns "unreachable" into a failure). Without
it the PostgreSQL variants are skipped, and the summary says so.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import text

from gateway.http import outbound_client
from kernel.database import create_engine
from kernel.kafka import EmbeddedBroker, ensure_topics, free_port, wait_for_broker
from kernel.settings import HubSettings
from tests.support.gateway_hub import GatewayHub, gateway_hub
from tests.support.hub_processes import drop_schemas

POSTGRES_URL = os.environ.get("HUB_TEST_POSTGRES_URL", "")
REQUIRE_POSTGRES = os.environ.get("HUB_REQUIRE_POSTGRES") == "1"
#: ``.ci/run`` sets it: a missing reference corpus fails the contract tests that read it
#: (AsyncAPI and CloudEvents schemas, e-Box, KSZ-BCSS…) instead of skipping them unseen.
REQUIRE_CORPUS = os.environ.get("HUB_REQUIRE_CORPUS") == "1"
T = TypeVar("T")
CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def run_isolated(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from a synchronous fixture on a private loop.

    Unlike ``asyncio.run`` this leaves the current event loop alone, which
    pytest-asyncio owns during the test.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def corpus_or_skip(folder: Path, required: bool) -> Path:
    """``folder`` when it is there; else a skip, or a failure when the corpus is ``required``."""
    if not folder.is_dir():
        reason = f"the reference corpus is not beside the checkout ({folder})"
        if required:
            pytest.fail(f"HUB_REQUIRE_CORPUS=1 but {reason}")
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def corpus() -> Path:
    return corpus_or_skip(CORPUS, REQUIRE_CORPUS)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The one broker of the test session: the embedded Tansu, or KAFKA_BOOTSTRAP_SERVERS."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if external:
        bootstrap = external
    else:
        broker = EmbeddedBroker(port=free_port())
        broker.start()
        bootstrap = broker.bootstrap_servers
    run_isolated(wait_for_broker(bootstrap))
    run_isolated(ensure_topics(bootstrap))
    yield bootstrap
    if broker:
        broker.stop()


@pytest.fixture
def hub_settings(tmp_path: Path) -> HubSettings:
    return HubSettings(var_dir=tmp_path / "var", corpus_dir=CORPUS)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The gateway's own client (``gateway.http``): connectors under test send with it,
    over the network to the sandbox, and tests drive the sandbox with it."""
    async with outbound_client(max_connections=16, timeout=10) as client:
        yield client


def _postgres_reachable() -> str | None:
    async def probe() -> None:
        engine = create_engine(POSTGRES_URL)
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        run_isolated(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("HUB_REQUIRE_POSTGRES=1 but HUB_TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL tests skipped: set HUB_TEST_POSTGRES_URL to run them")
    problem = _postgres_reachable()
    if problem:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is required and unreachable: {problem}")
        pytest.skip(f"PostgreSQL tests skipped: {POSTGRES_URL} unreachable ({problem})")
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """``(url, schema)`` of a fresh, empty database: a SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}", None
    url: str = request.getfixturevalue("postgres_url")
    schema = "t_" + uuid.uuid4().hex[:12]
    request.addfinalizer(lambda: run_isolated(drop_schemas(url, [schema])))
    return url, schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """For tests that run the hub's processes: None puts each process on its own
    SQLite file; otherwise the PostgreSQL URL (each process then uses its own schemas)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(autouse=True)
def _no_stray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's shell may export DATABASE_URL; tests pick their databases explicitly.
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture
async def running_gateway(
    tmp_path: Path, kafka_bootstrap: str, database: tuple[str, str | None], corpus: Path
) -> AsyncIterator[GatewayHub]:
    """A gateway and its sandbox, in processes of their own on the embedded broker."""
    async with gateway_hub(tmp_path, kafka_bootstrap, database, corpus) as running:
        yield running
