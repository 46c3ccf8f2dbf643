"""The shared application shell: tokens, Problem JSON, body limit, health and metrics."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from datetime import date, datetime, tzinfo
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import AwareDatetime

from kernel.api import RequestModel
from kernel.app import TraceAndCountMiddleware, broker_check, check_health_of, create_app
from kernel.auth import (
    KEY_ID,
    CallerDep,
    IdentityProviderUnavailable,
    TokenVerifier,
    Unauthorized,
    issue_token,
    load_or_create_issuer_key,
)
from kernel.kafka import free_port
from kernel.settings import HubSettings
from kernel.telemetry import NationalNumbersMasked


class Greeting(RequestModel):
    name: str
    times: int
    nicknames: tuple[str, ...] = ()
    on: date | None = None
    at: AwareDatetime | None = None


def build(settings: HubSettings) -> FastAPI:
    app = create_app(
        "test", settings.model_copy(update={"max_body_bytes": 1000}), title="t", description="d"
    )

    @app.post("/greet")
    async def greet(body: Greeting, caller: CallerDep) -> dict[str, str]:
        caller.require("test:write")
        return {"tenant": caller.tenant, "hello": body.name}

    @app.get("/greetings/{name}")
    async def greeting(name: str, caller: CallerDep, tone: str = "warm") -> dict[str, str]:
        return {"hello": name, "tone": tone}

    return app


@pytest.fixture
async def client(hub_settings: HubSettings) -> httpx.AsyncClient:
    app = build(hub_settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


def bearer(
    settings: HubSettings, tenant: str = "92137", scopes: tuple[str, ...] = ("test:write",)
) -> dict[str, str]:
    return {"Authorization": "Bearer " + issue_token(settings, tenant, list(scopes))}


async def test_a_valid_token_names_the_tenant(
    client: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    response = await client.post(
        "/greet", json={"name": "Ana", "times": 1}, headers=bearer(hub_settings)
    )
    assert response.json() == {"tenant": "92137", "hello": "Ana"}


async def test_missing_foreign_and_expired_tokens_are_refused(
    client: httpx.AsyncClient, hub_settings: HubSettings, tmp_path: object
) -> None:
    body = {"name": "Ana", "times": 1}
    missing = await client.post("/greet", json=body)
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["type"].endswith("/unauthorized")

    foreign = HubSettings(var_dir=hub_settings.var_dir.parent / "elsewhere")
    response = await client.post("/greet", json=body, headers=bearer(foreign))
    assert response.status_code == 401 and "not valid" in response.json()["detail"]

    expired = issue_token(
        hub_settings, "92137", ["test:write"], ttl=-TokenVerifier.CLOCK_SKEW_SECONDS - 10
    )
    response = await client.post(
        "/greet", json=body, headers={"Authorization": f"Bearer {expired}"}
    )
    assert response.json()["detail"] == "the bearer token has expired"

    response = await client.post(
        "/greet", json=body, headers=bearer(hub_settings, scopes=("test:read",))
    )
    assert response.status_code == 403 and "test:write" in response.json()["detail"]


async def test_a_token_without_a_proper_tenant_is_refused(
    client: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    from kernel.auth import load_or_create_issuer_key

    key = load_or_create_issuer_key(hub_settings.keys_dir)
    token = jwt.encode(
        {
            "iss": hub_settings.jwt_issuer,
            "aud": hub_settings.jwt_audience,
            "exp": 2**31,
            "tenant": "ALL",
        },
        key,
        algorithm="RS256",
    )
    response = await client.post(
        "/greet", json={"name": "A", "times": 1}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401 and "5-digit" in response.json()["detail"]


async def test_bad_bodies_get_specific_problems(
    client: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    headers = {**bearer(hub_settings), "content-type": "application/json"}
    malformed = await client.post("/greet", content=b'{"name": ', headers=headers)
    assert (malformed.status_code, malformed.json()["title"]) == (400, "Malformed JSON")

    wrong = await client.post(
        "/greet", json={"name": "A", "times": "many", "extra": 1}, headers=headers
    )
    assert wrong.status_code == 422
    fields = {error["field"] for error in wrong.json()["errors"]}
    assert fields == {"times", "extra"}

    huge = await client.post("/greet", content=b"x" * 2000, headers=headers)
    assert huge.status_code == 413 and huge.json()["type"].endswith("/body-too-large")

    for media_type in ("text/plain", "application/xml", None):
        typed = {"content-type": media_type} if media_type else {}
        other = await client.post(
            "/greet",
            content=b'{"name": "A", "times": 1}',
            headers={**bearer(hub_settings), **typed},
        )
        assert other.status_code == 415, media_type
        assert other.json()["type"].endswith("/unsupported-media-type")


async def test_control_characters_and_days_out_of_the_calendar_are_refused_everywhere(
    client: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    headers = bearer(hub_settings)
    refused = {
        "name": ({"name": "a\u0000b", "times": 1}, "U+0000"),
        "nicknames": ({"name": "A", "times": 1, "nicknames": ["ok", "v\u000bt"]}, "U+000B"),
        "on": ({"name": "A", "times": 1, "on": "9999-12-31"}, "9999-12-31 is out of"),
        "at": ({"name": "A", "times": 1, "at": "0001-01-01T00:00:00+01:00"}, "out of the"),
    }
    for field, (body, said) in refused.items():
        answer = await client.post("/greet", json=body, headers=headers)
        assert answer.status_code == 422, field
        [error] = answer.json()["errors"]
        assert error["field"] == field and said in error["message"]
    # Tab, line feed and carriage return are a text's own.
    kept = {"name": "A\tB\r\nC", "times": 1, "on": "2026-12-06"}
    assert (await client.post("/greet", json=kept, headers=headers)).status_code == 200

    for url in ("/greetings/a%00b", "/greetings/ab?tone=a%00", "/greetings/ab?tone=x%1Fy"):
        answer = await client.get(url, headers=headers)
        assert answer.status_code == 400, url
        assert answer.json()["type"].endswith("/control-character")
    assert (await client.get("/greetings/ab?tone=a%20b", headers=headers)).status_code == 200


async def test_a_body_over_the_limit_is_413_however_it_comes(
    client: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    headers = {**bearer(hub_settings), "content-type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(20):
            yield b"x" * 100

    streamed = await client.post("/greet", content=chunks(), headers=headers)
    assert streamed.status_code == 413 and streamed.json()["type"].endswith("/body-too-large")

    negative = await client.post(
        "/greet", content=b"{}", headers={**headers, "content-length": "-1"}
    )
    assert negative.status_code == 400
    assert negative.json()["type"].endswith("/bad-content-length")


async def test_a_method_the_route_does_not_take_is_a_problem_naming_those_it_does(
    client: httpx.AsyncClient,
) -> None:
    refused = await client.delete("/greetings/Ana")
    assert refused.status_code == 405
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/method-not-allowed")
    assert refused.headers["allow"] == "GET"  # RFC 9110 §15.5.6


async def test_health_metrics_and_jwks(
    client: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "component": "test"}
    await client.post("/greet", json={"name": "A", "times": 1}, headers=bearer(hub_settings))
    metrics = (await client.get("/metrics")).text
    assert 'hub_http_requests_total{component="test",method="POST",status="200"}' in metrics
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert jwks["keys"][0]["kid"] == "hub-dev-1" and jwks["keys"][0]["kty"] == "RSA"


async def test_a_verified_token_is_remembered_and_not_checked_again(
    hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(hub_settings)
    token = issue_token(hub_settings, "92137", ["test:write"])
    checks: list[str] = []
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        checks.append("decode")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    first, second = await verifier.verify(token), await verifier.verify(token)
    assert first == second and first.tenant == "92137"
    assert checks == ["decode"]
    await verifier.verify(
        issue_token(hub_settings, "92137", ["test:read"])
    )  # another token: checked
    assert checks == ["decode", "decode"]


async def test_a_remembered_token_is_refused_once_it_expires(
    hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(hub_settings)
    token = issue_token(hub_settings, "92137", ["test:write"], ttl=60)
    assert (await verifier.verify(token)).tenant == "92137"
    later = time.time() + 61 + TokenVerifier.CLOCK_SKEW_SECONDS

    class Later(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Later:
            return cls.fromtimestamp(later, tz)

    monkeypatch.setattr(time, "time", lambda: later)  # the verifier's clock
    monkeypatch.setattr(jwt.api_jwt, "datetime", Later)  # PyJWT's
    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify(token)


def token_issued_at(settings: HubSettings, issued: int, ttl: int) -> str:
    """A token as an identity provider whose clock reads ``issued`` makes it."""
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": "clerk",
        "tenant": "92137",
        "scope": "test:write",
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
    }
    key = load_or_create_issuer_key(settings.keys_dir)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KEY_ID})


async def test_a_providers_clock_a_little_off_the_hubs_is_tolerated(
    hub_settings: HubSettings,
) -> None:
    skew = TokenVerifier.CLOCK_SKEW_SECONDS
    now = int(time.time())
    # The provider's clock runs ahead: its fresh token is not refused as "not yet valid".
    ahead = token_issued_at(hub_settings, now + 5, ttl=300)
    assert (await TokenVerifier(hub_settings).verify(ahead)).tenant == "92137"
    # It runs behind: a token it still sees valid has just expired by the hub's clock.
    behind = token_issued_at(hub_settings, now - 300, ttl=295)
    assert (await TokenVerifier(hub_settings).verify(behind)).tenant == "92137"
    # Beyond the skew allowed, refused either way.
    with pytest.raises(Unauthorized, match="not yet valid"):
        await TokenVerifier(hub_settings).verify(
            token_issued_at(hub_settings, now + skew + 30, 300)
        )
    with pytest.raises(Unauthorized, match="expired"):
        await TokenVerifier(hub_settings).verify(
            token_issued_at(hub_settings, now - 300, 300 - skew - 5)
        )


async def test_a_remembered_token_is_checked_again_after_remember_seconds(
    hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(hub_settings)
    token = issue_token(hub_settings, "92137", ["test:write"], ttl=3600)
    await verifier.verify(token)
    checks: list[str] = []
    real_decode = jwt.decode
    monkeypatch.setattr(
        jwt, "decode", lambda *a, **k: checks.append("decode") or real_decode(*a, **k)
    )
    later = time.time() + TokenVerifier.REMEMBER_SECONDS + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert (await verifier.verify(token)).tenant == "92137"
    assert checks == ["decode"]


async def test_an_identity_provider_that_does_not_answer_holds_no_one_else_up(
    hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted: list[asyncio.StreamWriter] = []
    hung_up: list[asyncio.Future[None]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        hung_up.append(asyncio.get_running_loop().create_future())
        await reader.read()  # accepts, never answers, until the client gives up
        writer.close()
        await writer.wait_closed()
        hung_up[accepted.index(writer)].set_result(None)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(TokenVerifier, "JWKS_TIMEOUT_SECONDS", 0.5)
    settings = hub_settings.model_copy(
        update={"jwks_url": f"http://127.0.0.1:{port}/jwks", "jwt_issuer": "https://idp.test"}
    )
    verifier = TokenVerifier(settings)
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(ticking())
    tokens = [issue_token(hub_settings, "92137", [f"test:{n}"]) for n in range(4)]
    started = time.monotonic()
    try:
        refused = await asyncio.gather(
            *(verifier.verify(token) for token in tokens), return_exceptions=True
        )
        waited = time.monotonic() - started
        # A fetch the thread had already started when its request gave up runs to its own
        # timeout: once the thread is idle, every client has hung up (or will at once).
        await asyncio.get_running_loop().run_in_executor(verifier._fetcher, lambda: None)
        await asyncio.wait_for(asyncio.gather(*hung_up), timeout=5)
    finally:
        ticker.cancel()
        for writer in accepted:
            writer.close()  # a client left hanging must not outlive the test
        server.close()
        await server.wait_closed()
    assert accepted  # the provider was asked
    # The token may be valid: not a 401.
    assert all(isinstance(r, IdentityProviderUnavailable) and r.status == 503 for r in refused)
    assert ticks >= 5  # the loop went on while the keys were awaited
    # Each request waited its own timeout, not those of the fetches queued before it.
    assert waited < 2 * TokenVerifier.JWKS_TIMEOUT_SECONDS


async def test_the_verifier_remembers_at_most_its_limit(
    hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TokenVerifier, "REMEMBER_AT_MOST", 3)
    verifier = TokenVerifier(hub_settings)
    tokens = [issue_token(hub_settings, "92137", [f"s{n}"]) for n in range(5)]
    for token in tokens:
        await verifier.verify(token)
    assert list(verifier._verified) == tokens[2:]  # the oldest two were forgotten


async def answer_api_versions(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A broker's first answer to any Kafka client: its size, then the request's
    correlation id (and an error code)."""
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    request = await reader.readexactly(size)
    writer.write(struct.pack(">i", 6) + request[4:8] + b"\x00\x00")
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_healthz_names_what_the_process_cannot_reach(
    hub_settings: HubSettings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app("test", hub_settings, title="Test", description="Test")
    server = await asyncio.start_server(answer_api_versions, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        # As a service registers them when it starts: one bootstrap server answering will do.
        check_health_of(app, "broker", broker_check(f"127.0.0.1:{free_port()},127.0.0.1:{port}"))
        assert (await client.get("/healthz")).json() == {"status": "ok", "component": "test"}

        server.close()
        await server.wait_closed()

        async def database_away() -> None:
            raise ConnectionRefusedError("connection refused")

        check_health_of(app, "database", database_away)
        down = await client.get("/healthz")

    assert down.status_code == 503
    body = down.json()
    assert body["status"] == "degraded"
    # Only the kind of error: the text, which may name internal addresses, is logged.
    assert body["unreachable"]["database"] == "ConnectionRefusedError"
    assert set(body["unreachable"]) == {"broker", "database"}
    said = [record.getMessage() for record in caplog.records]
    assert "test cannot reach its database: ConnectionRefusedError: connection refused" in said


async def test_a_requests_span_is_named_by_its_route_not_by_its_path() -> None:
    inner = FastAPI()

    @inner.get("/v1/mails/{mail_id}")
    async def mail(mail_id: str) -> dict[str, str]:
        return {"id": mail_id}

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = TraceAndCountMiddleware(inner, "test")
    traced.tracer = provider.get_tracer("test")
    transport = httpx.ASGITransport(app=traced)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for mail_id in ("m-1", "m-2"):
            assert (await client.get(f"/v1/mails/{mail_id}")).status_code == 200
        assert (await client.get("/nowhere/m-3")).status_code == 404

    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["GET /v1/mails/{mail_id}"] * 2 + ["GET"]
    assert spans[0].attributes is not None
    assert spans[0].attributes["http.route"] == "/v1/mails/{mail_id}"


def test_an_exception_recorded_in_a_span_is_exported_with_national_numbers_masked() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(NationalNumbersMasked(exporter)))
    with (
        pytest.raises(ValueError),
        provider.get_tracer("test").start_as_current_span("handle"),
    ):
        raise ValueError("UNIQUE constraint failed [parameters: ('85073003328', 'Dupont')]")
    with provider.get_tracer("test").start_as_current_span("quiet"):
        pass

    failed, quiet = exporter.get_finished_spans()
    [recorded] = failed.events
    assert recorded.attributes is not None
    written = (
        f"{recorded.attributes['exception.message']} {recorded.attributes['exception.stacktrace']}"
    )
    assert "033" not in written and "85*********" in written
    assert failed.status.description is not None and "033" not in failed.status.description
    assert (quiet.name, quiet.events) == ("quiet", ())


async def test_a_broker_that_accepts_connections_but_answers_nothing_is_not_healthy() -> None:
    thawed, ended = asyncio.Event(), asyncio.Event()

    async def frozen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await thawed.wait()  # a hung broker: the system accepts, nobody answers
        writer.close()
        await writer.wait_closed()
        ended.set()

    server = await asyncio.start_server(frozen, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(broker_check(f"127.0.0.1:{port}")(), timeout=0.5)
    finally:
        thawed.set()
        await ended.wait()
        server.close()
        await server.wait_closed()


async def test_the_broker_check_does_not_wait_for_a_node_that_drops_packets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = await asyncio.start_server(answer_api_versions, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    open_connection = asyncio.open_connection

    async def dropping(host: str, port: int) -> Any:
        if host == "10.0.0.1":  # a node down for maintenance: no answer at all
            await asyncio.sleep(3600)
        return await open_connection(host, port)

    monkeypatch.setattr("kernel.app.asyncio.open_connection", dropping)
    try:
        check = broker_check(f"10.0.0.1:9092,127.0.0.1:{port}")
        await asyncio.wait_for(check(), timeout=1)  # the second answers: the broker is there
    finally:
        server.close()
        await server.wait_closed()
