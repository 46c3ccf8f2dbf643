"""Idempotency-Key (``kernel.idempotency``) on a route of its own, on SQLite and PostgreSQL:
the key commits with a change made at the second attempt, a kept answer is its caller's
only, and a key older than ``KEEP_FOR`` is forgotten."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.api import StorageDep, authorised
from kernel.app import create_app
from kernel.auth import Caller, issue_token
from kernel.database import utcnow
from kernel.idempotency import KEEP_FOR, IdempotencyMiddleware, IdempotentRequest
from kernel.migrations import Migration, create_tables, table_of
from kernel.settings import HubSettings
from kernel.tenants import load_tenants
from tests.support.databases import migrated_sessions

SAMBREVILLE = "92137"
THINGS = Table(
    "things",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", String(100)),
)
MIGRATIONS = [Migration(1, "things", create_tables(table_of(IdempotentRequest), THINGS))]


@dataclass
class Service:
    settings: HubSettings
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient = field(init=False)
    #: How many attempts of the next requests lose a race (and are run once more).
    races_to_lose: int = 0

    def auth(self, subject: str = "clerk", scopes: tuple[str, ...] = ("things:write",)) -> Any:
        token = issue_token(self.settings, SAMBREVILLE, list(scopes), subject=subject)
        return {"Authorization": f"Bearer {token}"}

    async def things(self) -> int:
        async with self.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(THINGS)) or 0)

    async def keys(self) -> list[tuple[str, int | None]]:
        async with self.sessions() as session:
            rows = await session.execute(select(IdempotentRequest.key, IdempotentRequest.status))
            return [(key, status) for key, status in rows]

    async def date_keys_back(self, age: timedelta) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(update(IdempotentRequest).values(created_at=utcnow() - age))


def build(service: Service) -> FastAPI:
    async def startup(app: FastAPI) -> list[Any]:
        app.state.sessions = service.sessions
        app.state.relay = None
        app.state.tenants = load_tenants(service.settings.tenants_dir)
        return []

    app = create_app(
        "things",
        service.settings,
        title="t",
        description="d",
        startup=startup,
        front=IdempotencyMiddleware,
    )

    @app.post("/things", status_code=201)
    async def make_thing(
        body: dict[str, str],
        store: StorageDep,
        caller: Annotated[Caller, Depends(authorised("things:write"))],
    ) -> dict[str, int]:
        # The shape of factures' once_more_if_raced: a unit of work rolled back by a
        # concurrent request's unique row, then run once more.
        async def step() -> int:
            async with store.unit_of_work() as session:
                added = insert(THINGS).values(name=body["name"]).returning(THINGS.c.id)
                thing = (await session.execute(added)).scalar_one()
                if service.races_to_lose:
                    service.races_to_lose -= 1
                    raise IntegrityError("INSERT INTO things", {}, Exception("a race lost"))
                return int(thing)

        try:
            thing = await step()
        except IntegrityError:
            thing = await step()
        return {"id": thing}

    return app


@pytest.fixture
async def service(
    hub_settings: HubSettings, database: tuple[str, str | None]
) -> AsyncIterator[Service]:
    async with migrated_sessions(database, "things", MIGRATIONS) as sessions:
        service = Service(hub_settings, sessions)
        app = build(service)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://things") as client,
        ):
            service.http = client
            yield service


def problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["type"].endswith("/" + slug)


async def test_a_change_committed_at_its_second_attempt_commits_its_key(
    service: Service,
) -> None:
    service.races_to_lose = 1
    keyed = {**service.auth(), "Idempotency-Key": "thing-1"}
    first = await service.http.post("/things", json={"name": "a"}, headers=keyed)
    assert first.status_code == 201
    # The first attempt's claim was rolled back with it: the second claimed the key again.
    assert await service.keys() == [("thing-1", 201)]

    again = await service.http.post("/things", json={"name": "a"}, headers=keyed)
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert await service.things() == 1


async def test_a_kept_answer_is_given_again_to_its_caller_only(service: Service) -> None:
    keyed = {"Idempotency-Key": "thing-2"}
    first = await service.http.post(
        "/things", json={"name": "b"}, headers={**service.auth("clerk"), **keyed}
    )
    assert first.status_code == 201

    # Its caller, with a new token, gets it again.
    again = await service.http.post(
        "/things", json={"name": "b"}, headers={**service.auth("clerk"), **keyed}
    )
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"

    # Another caller of the tenant does not, whether the route would let it write or not
    # (the route, which checks the scope, is not reached).
    for other in (
        service.auth("colleague"),
        service.auth("reader", scopes=("things:read",)),
        service.auth("clerk", scopes=("things:read",)),  # its own token, without the scope
    ):
        refused = await service.http.post("/things", json={"name": "b"}, headers={**other, **keyed})
        problem(refused, 422, "idempotency-key-of-another-caller")
        assert "idempotent-replayed" not in refused.headers

    # Its caller with another request is told the key was reused, as before.
    reused = await service.http.post(
        "/things", json={"name": "c"}, headers={**service.auth("clerk"), **keyed}
    )
    problem(reused, 422, "idempotency-key-reused")
    assert await service.things() == 1


async def test_a_key_kept_before_callers_were_told_apart_is_still_replayed(
    service: Service,
) -> None:
    keyed = {**service.auth(), "Idempotency-Key": "before-the-upgrade"}
    first = await service.http.post("/things", json={"name": "f"}, headers=keyed)
    # As the hub of before kept it: the request's SHA-256 alone.
    async with service.sessions() as session, session.begin():
        [request] = (await session.scalars(select(IdempotentRequest))).all()
        request.fingerprint = hashlib.sha256(b'POST\0/things\0\0{"name":"f"}').hexdigest()

    again = await service.http.post("/things", json={"name": "f"}, headers=keyed)
    assert (again.json(), again.headers["idempotent-replayed"]) == (first.json(), "true")
    assert await service.things() == 1


@pytest.mark.parametrize("answer_kept", [True, False], ids=["answered", "answer-not-kept"])
async def test_a_key_older_than_keep_for_is_as_if_never_used(
    service: Service, answer_kept: bool
) -> None:
    keyed = {**service.auth(), "Idempotency-Key": "daily-report"}
    first = await service.http.post("/things", json={"name": "monday"}, headers=keyed)
    assert first.status_code == 201
    if not answer_kept:  # the process stopped between the change and its answer
        async with service.sessions() as session, session.begin():
            await session.execute(update(IdempotentRequest).values(status=None))
    await service.date_keys_back(KEEP_FOR + timedelta(minutes=1))

    # Neither replayed (nor 422 for another body), nor 409 for an answer never kept.
    later = await service.http.post("/things", json={"name": "wednesday"}, headers=keyed)
    assert later.status_code == 201 and "idempotent-replayed" not in later.headers
    assert later.json() != first.json()
    # The key is the new request's now.
    again = await service.http.post("/things", json={"name": "wednesday"}, headers=keyed)
    assert (again.json(), again.headers["idempotent-replayed"]) == (later.json(), "true")
    assert await service.keys() == [("daily-report", 201)]
    assert await service.things() == 2


async def test_a_key_younger_than_keep_for_is_still_kept(service: Service) -> None:
    keyed = {**service.auth(), "Idempotency-Key": "nearly-a-day"}
    first = await service.http.post("/things", json={"name": "d"}, headers=keyed)
    await service.date_keys_back(KEEP_FOR - timedelta(minutes=1))

    again = await service.http.post("/things", json={"name": "d"}, headers=keyed)
    assert (again.json(), again.headers["idempotent-replayed"]) == (first.json(), "true")
    reused = await service.http.post("/things", json={"name": "e"}, headers=keyed)
    problem(reused, 422, "idempotency-key-reused")
    assert await service.things() == 1
