"""The benchmarks' lean HTTP/1.1 client, against a small server on 127.0.0.1 that answers
each request as its path says (length, chunks, or closing the connection)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from benchmarks.lean_http import LeanClient


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            request_line, *lines = head.decode("latin-1").strip().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((request_line, headers, body))
            path = request_line.split(" ")[1]
            if path == "/chunked":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n6; ext=1\r\n world\r\n0\r\n\r\n"
                )
            elif path == "/close":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye"
                )
                await writer.drain()
                break
            elif path == "/hang-up":
                break
            elif path == "/silent":
                await reader.read()  # no answer, until the client gives up and closes
                break
            else:
                answer = json.dumps({"path": path, "size": len(body)}).encode()
                writer.write(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
            await writer.drain()
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Server, str]]:
    server = Server()
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    yield server, f"http://127.0.0.1:{port}"
    listening.close()
    await listening.wait_closed()


async def test_requests_reuse_one_keep_alive_connection(served: tuple[Server, str]) -> None:
    server, url = served
    async with LeanClient(url, headers={"Authorization": "Bearer t"}) as client:
        small = await client.post("/items", b'{"a": 1}', {"Content-Type": "application/json"})
        large = await client.post("/items", b"x" * 300_000)  # sent after its head
        page = await client.get(f"{url}/oparl/next?page=2")  # an absolute next link
    assert (small.status_code, small.json()) == (201, {"path": "/items", "size": 8})
    assert large.json()["size"] == 300_000
    assert page.json()["path"] == "/oparl/next?page=2"
    assert server.connections == 1
    request_line, headers, body = server.requests[0]
    assert request_line == "POST /items HTTP/1.1"
    assert headers["authorization"] == "Bearer t"
    assert headers["content-type"] == "application/json"
    assert body == b'{"a": 1}'
    assert "content-length" not in server.requests[2][1]  # a GET without a body


async def test_a_chunked_answer_is_read_whole(served: tuple[Server, str]) -> None:
    _, url = served
    async with LeanClient(url) as client:
        answer = await client.get("/chunked")
        after = await client.get("/after")
    assert answer.content == b"hello world"
    assert after.status_code == 201


async def test_a_connection_the_server_closes_is_not_used_again(
    served: tuple[Server, str],
) -> None:
    server, url = served
    async with LeanClient(url) as client:
        assert (await client.get("/close")).text == "bye"
        assert (await client.get("/next")).status_code == 201
    assert server.connections == 2


async def test_a_server_hanging_up_without_an_answer_is_an_error(
    served: tuple[Server, str],
) -> None:
    _, url = served
    async with LeanClient(url) as client:
        with pytest.raises(ConnectionError, match="GET /hang-up: the server closed"):
            await client.get("/hang-up")


def test_only_plain_http_to_a_host_and_port() -> None:
    with pytest.raises(ValueError, match="http://host:port expected"):
        LeanClient("https://127.0.0.1:8443")


async def test_a_server_that_does_not_answer_times_out(served: tuple[Server, str]) -> None:
    _, url = served
    async with LeanClient(url, timeout=0.1) as client:
        with pytest.raises(TimeoutError, match=r"GET /silent: no answer in 0\.1 s"):
            await client.get("/silent")
