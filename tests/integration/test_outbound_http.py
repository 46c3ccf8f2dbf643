"""gateway.http: the gateway's outbound client, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from gateway.errors import RetryableDeliveryError, translate_transport_errors
from gateway.http import (
    MAX_RESPONSE_BYTES,
    ResponseTooLarge,
    client_certificate_tls,
    outbound_client,
)
from kernel.kafka import free_port
from tests.support.keys import encrypted_identity
from tests.support.servers import serving


def translated(error: httpx.HTTPError) -> str:
    """What the gateway records for ``error`` (``gateway.errors``)."""
    with pytest.raises(RetryableDeliveryError) as retryable, translate_transport_errors("Target"):
        raise error
    return str(retryable.value)


@pytest.fixture
async def target() -> AsyncIterator[tuple[str, list[int]]]:
    """A target that answers with the SHA-256 of the body, noting each caller's port."""
    ports: list[int] = []
    app = FastAPI()

    @app.post("/digest")
    async def digest(request: Request) -> dict[str, str]:
        assert request.client is not None
        ports.append(request.client.port)
        return {"sha256": hashlib.sha256(await request.body()).hexdigest()}

    @app.get("/session")
    async def session(request: Request, response: Response) -> dict[str, str | None]:
        response.set_cookie("session", "tenant-a")
        return {"cookie": request.headers.get("cookie")}

    @app.get("/flood")
    async def flood(declared: bool = True) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(MAX_RESPONSE_BYTES // 65536 + 2):
                yield b"x" * 65536

        if declared:
            return Response(b"x" * (MAX_RESPONSE_BYTES + 1), media_type="text/plain")
        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/compressed")
    async def compressed(request: Request, layers: int = 1, inner_mib: int = 1) -> Response:
        # Zeros compress a thousandfold: a small answer on the wire, a large one decoded.
        body = bytes(inner_mib * 1024 * 1024)
        for _ in range(layers):
            body = gzip.compress(body)
        headers = {
            "Content-Encoding": ", ".join(["gzip"] * layers),
            "X-Accepted": request.headers.get("accept-encoding", ""),
        }
        return Response(body, media_type="application/octet-stream", headers=headers)

    @app.get("/deflated")
    async def deflated(raw: bool) -> Response:
        # HTTP's "deflate" is zlib's format; some servers send bare deflate under its name.
        packer = zlib.compressobj(wbits=-15 if raw else 15)
        body = packer.compress(b"a letter") + packer.flush()
        return Response(body, media_type="text/plain", headers={"Content-Encoding": "deflate"})

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(2)
        return {"late": "yes"}

    async with serving(app) as url:
        yield url, ports


async def test_a_cookie_a_target_sets_never_rides_on_a_later_request(
    target: tuple[str, list[int]],
) -> None:
    # One client sends for every tenant: what one target's answer set is not sent again.
    url, _ = target
    async with outbound_client(max_connections=2) as client:
        first = await client.get(f"{url}/session")
        assert first.cookies["session"] == "tenant-a"
        second = await client.get(f"{url}/session")
        assert second.json() == {"cookie": None}
        assert not client.cookies


async def test_requests_share_at_most_the_pools_connections(
    target: tuple[str, list[int]],
) -> None:
    url, ports = target
    async with outbound_client(max_connections=2) as http:
        answers = await asyncio.gather(
            *(http.post(f"{url}/digest", content=b"%d" % n) for n in range(20))
        )
    assert [answer.json()["sha256"] for answer in answers] == [
        hashlib.sha256(b"%d" % n).hexdigest() for n in range(20)
    ]
    assert len(ports) == 20 and len(set(ports)) <= 2  # kept alive, never over the limit


async def test_a_body_over_a_mebibyte_arrives_whole(target: tuple[str, list[int]]) -> None:
    url, _ = target
    body = bytes(range(256)) * 12_000  # 3 MB, as a large e-Box PDF
    async with outbound_client(max_connections=2) as http:
        answer = await http.post(f"{url}/digest", content=body)
    assert answer.json()["sha256"] == hashlib.sha256(body).hexdigest()


async def test_a_slow_target_is_a_retryable_timeout(target: tuple[str, list[int]]) -> None:
    url, _ = target
    async with outbound_client(max_connections=2) as http:
        with pytest.raises(httpx.ReadTimeout) as raised:
            await http.get(f"{url}/slow", timeout=0.3)
    assert translated(raised.value).startswith("Target timed out")


async def test_a_refused_connection_is_unreachable_not_a_timeout() -> None:
    closed_port = free_port()
    async with outbound_client(max_connections=2) as http:
        with pytest.raises(httpx.ConnectError) as raised:
            await http.get(f"http://127.0.0.1:{closed_port}/", timeout=2)
    assert translated(raised.value).startswith("Target unreachable")


async def test_a_target_closing_without_an_answer_is_unreachable_not_a_timeout() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with outbound_client(max_connections=2) as http:
            with pytest.raises(httpx.TransportError) as raised:
                await http.get(f"http://127.0.0.1:{port}/", timeout=2)
    finally:
        server.close()
        await server.wait_closed()
    assert not isinstance(raised.value, httpx.TimeoutException)
    assert translated(raised.value).startswith("Target unreachable")


@pytest.mark.parametrize("declared", [True, False])
async def test_an_answer_too_large_is_not_read_whole(
    target: tuple[str, list[int]], declared: bool
) -> None:
    url, _ = target
    async with outbound_client(max_connections=2) as client:
        with pytest.raises(ResponseTooLarge) as raised:
            await client.get(f"{url}/flood", params={"declared": declared})
        assert "answered with too much" in translated(raised.value)
        # Answers within the limit are read whole, as before.
        fine = await client.post(f"{url}/digest", content=b"letter")
    assert fine.json() == {"sha256": hashlib.sha256(b"letter").hexdigest()}


async def test_a_compressed_answer_is_decoded_within_the_limit(
    target: tuple[str, list[int]],
) -> None:
    url, _ = target
    async with outbound_client(max_connections=2) as client:
        answer = await client.get(f"{url}/compressed", params={"layers": 2, "inner_mib": 1})
        assert answer.content == bytes(1024 * 1024)
        # Only the encodings the client decodes with a bound are asked for.
        assert answer.headers["x-accepted"] == "gzip, deflate"
        # A few kilobytes on the wire that would decode to 64 MiB are not decoded whole.
        with pytest.raises(ResponseTooLarge) as raised:
            await client.get(f"{url}/compressed", params={"layers": 2, "inner_mib": 64})
    assert "once decompressed" in str(raised.value)


async def test_deflate_is_read_with_its_header_or_without(target: tuple[str, list[int]]) -> None:
    url, _ = target
    async with outbound_client(max_connections=2) as client:
        for raw in (False, True):
            answer = await client.get(f"{url}/deflated", params={"raw": raw})
            assert answer.content == b"a letter"


def test_a_client_certificate_with_an_encrypted_key_needs_its_passphrase(
    tmp_path: Path,
) -> None:
    encrypted, cert_file = encrypted_identity(tmp_path / "keys", "92137", b"secret")
    assert client_certificate_tls(encrypted, cert_file, password="secret")
    for wrong in (None, "guess"):  # never a prompt on the terminal: an error naming the files
        with pytest.raises(ValueError, match=r"encrypted-key-92137\.pem"):
            client_certificate_tls(encrypted, cert_file, password=wrong)
