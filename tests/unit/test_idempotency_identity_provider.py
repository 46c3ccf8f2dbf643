"""Idempotency-Key (``kernel.idempotency``) while the identity provider is slow: a request
whose token cannot be checked is refused, never run without its key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from kernel.auth import Caller, IdentityProviderUnavailable
from kernel.settings import HubSettings
from tests.support.databases import migrated_sessions
from tests.unit.test_idempotency_keys import MIGRATIONS, Service, build, problem


class KeysFetchedTooLate:
    """A provider that answers after the middleware's check gave up, and before the
    route's: every odd check fails, every even one passes (the keys came meanwhile)."""

    def __init__(self, verifier: Any) -> None:
        self.verifier = verifier
        self.checks = 0

    async def verify(self, token: str) -> Caller:
        self.checks += 1
        if self.checks % 2:
            raise IdentityProviderUnavailable("no answer in 5 s")
        caller: Caller = await self.verifier.verify(token)
        return caller


@pytest.fixture
async def served(
    hub_settings: HubSettings, database: tuple[str, str | None]
) -> AsyncIterator[tuple[Service, FastAPI]]:
    async with migrated_sessions(database, "things", MIGRATIONS) as sessions:
        service = Service(hub_settings, sessions)
        app = build(service)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://things") as client,
        ):
            service.http = client
            yield service, app


async def test_a_keyed_request_whose_token_cannot_be_checked_is_refused_not_run_keyless(
    served: tuple[Service, FastAPI],
) -> None:
    service, app = served
    verifier = app.state.token_verifier
    keyed = {**service.auth(), "Idempotency-Key": "slow-provider"}

    app.state.token_verifier = slow = KeysFetchedTooLate(verifier)
    refused = await service.http.post("/things", json={"name": "a"}, headers=keyed)
    problem(refused, 503, "identity-provider-unavailable")
    assert slow.checks == 1  # the route, whose check would have passed, was not reached
    assert await service.things() == 0

    # The client sends it again once the provider answers: made once, then replayed.
    app.state.token_verifier = verifier
    made = await service.http.post("/things", json={"name": "a"}, headers=keyed)
    again = await service.http.post("/things", json={"name": "a"}, headers=keyed)
    assert made.status_code == 201
    assert (again.json(), again.headers["idempotent-replayed"]) == (made.json(), "true")
    assert await service.things() == 1


async def test_a_keyed_request_with_an_invalid_token_gets_the_routes_401(
    served: tuple[Service, FastAPI],
) -> None:
    service, _ = served
    refused = await service.http.post(
        "/things",
        json={"name": "b"},
        headers={"Authorization": "Bearer not-a-jwt", "Idempotency-Key": "bad-token"},
    )
    problem(refused, 401, "unauthorized")
    assert await service.keys() == []
