"""The database URLs operators paste reach PostgreSQL through the hub's driver, with
libpq's parameters said in asyncpg's words."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from kernel.database import create_engine
from kernel.pki import ensure_sandbox_tls_identity, ensure_tenant_signing_identity
from kernel.settings import normalise_database_url

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("pasted", "used"),
    [
        ("postgres://u:p@db/hub", "postgresql+asyncpg://u:p@db/hub"),
        ("postgresql+psycopg://u:p@db/hub", "postgresql+asyncpg://u:p@db/hub"),
        ("postgresql://u:p@db/hub?sslmode=require", "postgresql+asyncpg://u:p@db/hub?ssl=require"),
        ("sqlite:///var/hub.db", "sqlite+aiosqlite:///var/hub.db"),
    ],
)
def test_a_pasted_url_gets_the_hubs_driver_and_its_words(pasted: str, used: str) -> None:
    assert normalise_database_url(pasted) == used


@pytest.mark.postgres
async def test_libpqs_sslmode_reaches_postgresql(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    engine = create_engine(plain + ("&" if "?" in plain else "?") + "sslmode=disable")
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_libpqs_connect_timeout_reaches_postgresql(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    engine = create_engine(plain + ("&" if "?" in plain else "?") + "connect_timeout=5")
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
    finally:
        await engine.dispose()


async def test_connect_timeout_bounds_the_wait_for_a_server_that_does_not_answer() -> None:
    held: list[asyncio.StreamWriter] = []
    answering: set[asyncio.Task[None]] = set()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answering.add(asyncio.current_task())  # type: ignore[arg-type]
        held.append(writer)
        await reader.read()  # holds the connection, says nothing

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = create_engine(
        f"postgresql://hub@127.0.0.1:{port}/hub?sslmode=disable&connect_timeout=1"
    )
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            async with engine.connect():
                pass
        assert time.monotonic() - started < 5  # not asyncpg's own 60 s
    finally:
        await engine.dispose()
        server.close()
        for writer in held:
            writer.close()
        await asyncio.gather(*answering, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.postgres
async def test_a_host_given_as_a_parameter_reaches_postgresql_and_a_failover_list_is_kept(
    postgres_url: str,
) -> None:
    # libpq's ways to name the host in the query (a Unix socket's directory, several hosts
    # to fail over to) were refused by name once the URL's parameters were checked.
    parsed = make_url(postgres_url)
    url = (
        f"postgresql://{parsed.username}@/{parsed.database}"
        f"?host={parsed.host}&port={parsed.port or 5432}&connect_timeout=5"
    )
    engine = create_engine(normalise_database_url(url))
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
    finally:
        await engine.dispose()
    failover = "postgresql://hub@/hub?host=db1:5432&host=db2:5432&connect_timeout=5"
    engine = create_engine(normalise_database_url(failover))
    try:
        assert engine.url.query["host"] == ("db1:5432", "db2:5432")
    finally:
        await engine.dispose()


def test_a_parameter_the_hub_does_not_know_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="does not know: application_name, keepalives") as refused:
        normalise_database_url("postgresql://hub:s3cret@db/hub?keepalives=1&application_name=x")
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("parameters", "refusal"),
    [
        ("sslmode=prefer&sslrootcert=ca.pem", "need sslmode=require, verify-ca or verify-full"),
        ("sslrootcert=ca.pem", "need sslmode=require, verify-ca or verify-full"),
        ("sslmode=require&sslkey=hub.key", "sslkey needs sslcert"),
        ("connect_timeout=soon", "connect_timeout='soon' is not seconds"),
    ],
)
def test_libpq_parameters_that_cannot_work_are_refused_at_start(
    parameters: str, refusal: str
) -> None:
    with pytest.raises(ValueError, match=refusal):
        create_engine(f"postgresql://hub@db/hub?{parameters}")


@contextlib.asynccontextmanager
async def pretend_postgresql(
    identity: tuple[Path, Path], client_authority: Path | None = None
) -> AsyncIterator[tuple[int, list[dict[str, object]]]]:
    """A server that takes asyncpg's SSLRequest, shakes hands as ``identity`` (key,
    certificate), then hangs up; its list has the client certificate of each handshake."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(identity[1], identity[0])
    if client_authority is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_authority)
    handshakes: list[dict[str, object]] = []
    answering: set[asyncio.Task[None]] = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answering.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readexactly(8)  # SSLRequest
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(context)
            handshakes.append(writer.get_extra_info("peercert") or {})
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], handshakes
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.gather(*answering)


async def connecting(url: str) -> BaseException:
    """Why connecting to ``url`` failed: the pretended server hangs up, at best."""
    engine = create_engine(url)
    try:
        with pytest.raises(Exception) as failed:
            async with engine.connect():
                pass
        return failed.value
    finally:
        await engine.dispose()


async def test_libpqs_certificate_files_check_the_server_as_its_sslmode_says(
    tmp_path: Path,
) -> None:
    server = ensure_sandbox_tls_identity(tmp_path)  # names 127.0.0.1
    unnamed = ensure_tenant_signing_identity(tmp_path, "92137")  # names no host
    other = ensure_tenant_signing_identity(tmp_path, "62063")
    cases = [
        (server, f"verify-full&sslrootcert={server[1]}", True),
        (server, f"verify-full&sslrootcert={other[1]}", False),  # another authority's
        (unnamed, f"verify-full&sslrootcert={unnamed[1]}", False),  # not the host's
        (unnamed, f"verify-ca&sslrootcert={unnamed[1]}", True),  # the host is not checked
        (unnamed, f"require&sslcert={other[1]}&sslkey={other[0]}", True),
        (unnamed, f"require&sslrootcert={server[1]}", False),  # checked as with verify-ca
    ]
    for identity, parameters, trusted in cases:
        async with pretend_postgresql(identity) as (port, handshakes):
            url = f"postgresql://hub@127.0.0.1:{port}/hub?connect_timeout=5&sslmode={parameters}"
            failure = await connecting(url)
        assert isinstance(failure, ssl.SSLCertVerificationError) != trusted, (parameters, failure)
        assert len(handshakes) == trusted, parameters


async def test_libpqs_client_certificate_is_shown_to_a_server_that_asks(tmp_path: Path) -> None:
    key, certificate = ensure_tenant_signing_identity(tmp_path, "92137")
    async with pretend_postgresql(ensure_sandbox_tls_identity(tmp_path), certificate) as (
        port,
        handshakes,
    ):
        parameters = f"sslmode=require&sslcert={certificate}&sslkey={key}&connect_timeout=5"
        await connecting(f"postgresql://hub@127.0.0.1:{port}/hub?{parameters}")
    [shown] = handshakes
    assert tuple(
        part
        for part in shown["subject"]
        if part[0][0] == "commonName"  # type: ignore[attr-defined]
    ) == ((("commonName", "hub-92137"),),)
