"""A lean HTTP/1.1 client for the benchmarks' load: keep-alive connections over asyncio streams.

The benchmarks' client runs on the same two cores as the hub it measures, so its own
CPU is CPU the services under test do not get. httpx's client took more CPU than the
server for an OParl page (1.7 ms against meeting's 1.3 ms) and 3 ms for each createItem
call, a fifth of the whole run's CPU (measured, docs/benchmarks.md). Like a load
generator such as wrk, this client does only what the load needs: it writes a request,
reads the status line, the headers and the body (``Content-Length`` or chunked), and
keeps the connection for the next request. It is not a general client: no redirects, no
TLS, no cookies, no proxies; the hub's own code uses httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Shorter than uvicorn's keep-alive timeout (5 s): a connection idle for longer may have
#: been closed by the server while this client was not looking, and a request written on
#: it would be lost without an answer.
IDLE_EXPIRY_SECONDS = 4.0
_HEAD_END = b"\r\n\r\n"
#: A body up to this size is sent with its head in one write; a larger one after it,
#: without copying it.
_JOINED_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class LeanResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class LeanClient:
    """Requests to one ``base_url`` (``http://host:port``), each on an idle keep-alive
    connection when there is one and on a new one otherwise, at most ``max_connections``
    at once (the others wait for one, as in httpx's pool)."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 64,
        timeout: float = 60.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"{base_url!r}: http://host:port expected")
        self.host, self.port = parts.hostname, parts.port
        self._origin = f"http://{parts.netloc}"
        fixed = {"Host": parts.netloc, **(headers or {})}
        self._fixed_head = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        #: Seconds a request may take from its first byte sent to its answer's last byte
        #: (a hung server fails the benchmark instead of stalling it).
        self._timeout = timeout

    async def __aenter__(self) -> LeanClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> LeanResponse:
        return await self.request("GET", url, headers=headers)

    async def post(
        self, url: str, content: bytes, headers: Mapping[str, str] | None = None
    ) -> LeanResponse:
        return await self.request("POST", url, content, headers)

    async def request(
        self,
        method: str,
        url: str,
        content: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> LeanResponse:
        target = self._target(url)
        head = f"{method} {target} HTTP/1.1\r\n{self._fixed_head}"
        if headers:
            head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if content or method != "GET":
            head += f"Content-Length: {len(content)}\r\n"
        async with self._slots:
            connection = await self._connection()
            try:
                head_bytes = head.encode("latin-1") + b"\r\n"
                if len(content) <= _JOINED_BODY_BYTES:  # one segment, one system call
                    connection.writer.write(head_bytes + content)
                else:
                    connection.writer.write(head_bytes)
                    connection.writer.write(content)
                async with asyncio.timeout(self._timeout):
                    response = await self._read_response(connection.reader, f"{method} {target}")
            except TimeoutError as exc:
                await connection.close()
                raise TimeoutError(f"{method} {target}: no answer in {self._timeout} s") from exc
            except BaseException:
                await connection.close()
                raise
            if response.headers.get("connection", "").lower() == "close":
                await connection.close()
            else:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            return response

    def _target(self, url: str) -> str:
        if url.startswith("/"):
            return url
        if not url.startswith(self._origin + "/"):
            raise ValueError(f"{url!r} is not on {self._origin}")
        return url[len(self._origin) :]

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < IDLE_EXPIRY_SECONDS:
                return connection
            await connection.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        # A request's last segment must not wait for the server's delayed acknowledgement.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader, what: str) -> LeanResponse:
        try:
            head = await reader.readuntil(_HEAD_END)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError(f"{what}: the server closed the connection") from exc
        status_line, *lines = head[: -len(_HEAD_END)].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1."):
            raise ConnectionError(f"{what}: not an HTTP/1.x answer: {status_line!r}")
        status = int(rest.partition(" ")[0])
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await LeanClient._read_chunked(reader)
        else:
            raise ConnectionError(f"{what}: an answer with neither a length nor chunks")
        return LeanResponse(status, headers, body)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
