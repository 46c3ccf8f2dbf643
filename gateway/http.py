"""The gateway's one outbound HTTP client: httpx's API over aiohttp's connection pool.

Every connector sends through the client ``gateway.main`` builds here: the
REST ones with httpx, the SOAP ones through zeep's transport over the same
client (``gateway.connectors.soap.SharedPoolTransport``). Connectors, their
error translation (``gateway.errors``) and their tests speak httpx only.

Why aiohttp below httpx (``httpx-aiohttp``, a transport published by one of
httpx's maintainers, which the OpenAI and Anthropic Python SDKs use for their
aiohttp option): httpcore's pool asks every pooled connection whether it
expired, through anyio's attribute lookup and a ``poll`` of its socket, at
each request and each response. With the gateway's 8 to 16 requests in
flight, 4,000 POSTs of 2 kB to a local server cost the client 1.13-1.56 ms of
CPU each; over aiohttp's pool 0.33-0.45 ms (``benchmarks/http_client.py``,
``docs/benchmarks.md``). In a profile of the gateway during the NOTICe flow,
httpx was 55% of its samples, 12% in that expiry check alone.

aiohttp's exceptions reach the connectors as httpx's, with aiohttp's as their
``__cause__``: a timeout as ``TimeoutException``, any other failure of the
connection as ``TransportError`` (``OutboundTransport`` corrects the one case
``httpx-aiohttp`` gets wrong: a refused or broken connection is not a timeout).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

#: How long an idle connection to a target stays open: under the 5 s after which
#: uvicorn and Apache close one, so that a request rarely meets a connection the
#: target has just closed (it would be retried, but later).
KEEPALIVE_SECONDS = 4.0


class OutboundTransport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            # httpx-aiohttp maps every aiohttp ClientConnectionError to ConnectTimeout;
            # the operator must read "refused" or "disconnected", not "timed out".
            cause = exc.__cause__
            if cause is None or isinstance(cause, asyncio.TimeoutError):
                raise
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(cause), request=request) from cause
            raise httpx.ReadError(str(cause) or type(cause).__name__, request=request) from cause


def outbound_transport(
    max_connections: int, per_host: int | None = None, tls: ssl.SSLContext | None = None
) -> httpx.AsyncBaseTransport:
    """aiohttp's pool with at most ``max_connections`` open, and ``per_host`` to one host
    (host and port) if given, TLS verified as httpx does, or as ``tls`` says (a client
    certificate, more trusted certificates)."""

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=per_host or 0,
            keepalive_timeout=KEEPALIVE_SECONDS,
            ssl=tls or httpx.create_ssl_context(),
        )
        # aiohttp keeps no cookies of its own: httpx's client above already handles them.
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    # Built at the first request: an aiohttp session belongs to the loop that runs it.
    return OutboundTransport(client=session)


#: The largest answer the gateway reads from a target: over four times the largest
#: document an event carries (4 MiB, base64 in JSON). A 300 MB error page was read whole.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class ResponseTooLarge(httpx.TransportError):
    """A target's answer longer than ``MAX_RESPONSE_BYTES``: not read further."""

    def __init__(self, message: str, *, request: httpx.Request, status: int) -> None:
        super().__init__(f"{message} (HTTP {status})", request=request)
        #: The answer's status: a 2xx is the document itself; another, an error page.
        self.status = status


class UndecodableResponse(httpx.DecodingError):
    """A target's answer that is not in the content encoding it says (a proxy's plain error
    page marked gzip): its status still says what the target answered."""

    def __init__(
        self, message: str, *, request: httpx.Request, status: int, headers: httpx.Headers
    ) -> None:
        super().__init__(f"{message} (HTTP {status})", request=request)
        self.status = status
        #: The answer's headers: a 429's or a 503's Retry-After holds all the same.
        self.headers = headers


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing a response sets."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class OutboundClient(httpx.AsyncClient):
    """An httpx client that keeps no cookies.

    One client sends for every tenant to every target, so a cookie one target set
    must never ride along on another tenant's request; the services the gateway
    calls authenticate each request (tokens, signatures, credentials) and keep no
    session in cookies. Reading ``Set-Cookie`` also cost: httpx builds urllib's
    request and response wrappers for each response, 6% of the gateway's CPU in the
    NOTICe flow (docs/benchmarks.md).
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise AttributeError("the gateway's outbound client keeps no cookies")

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """The answer, read up to ``MAX_RESPONSE_BYTES`` (``ResponseTooLarge`` beyond)."""
        if kwargs.get("stream"):
            return await super().send(request, **kwargs)
        response = await super().send(request, **{**kwargs, "stream": True})
        if response.is_stream_consumed:
            # Handed over whole and decoded already (a transport of tests, httpx's mock).
            if len(response.content) > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(
                    f"an answer over {MAX_RESPONSE_BYTES} bytes",
                    request=request,
                    status=response.status_code,
                )
            return response
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(
                    f"an answer of {declared} bytes",
                    request=request,
                    status=response.status_code,
                )
            body = bytearray()
            # As sent: httpx's decoding of each chunk is unbounded, and 980 bytes of a
            # "gzip, gzip" answer grew to 512 MiB before any length could be checked.
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise ResponseTooLarge(
                        f"an answer over {MAX_RESPONSE_BYTES} bytes",
                        request=request,
                        status=response.status_code,
                    )
        finally:
            await response.aclose()
        # The body read is the response's content from now on, as a plain send gives it.
        response._content = _decoded(bytes(body), response)
        return response


def _decoded(body: bytes, response: httpx.Response) -> bytes:
    """``body`` undone of its content encodings, each layer's output bounded by
    ``MAX_RESPONSE_BYTES``; an encoding the client did not ask for is left as httpx does."""
    encodings = [
        name.strip().lower()
        for name in response.headers.get("content-encoding", "").split(",")
        if name.strip()
    ]
    for encoding in reversed(encodings):  # the last applied comes off first
        if encoding not in _DECOMPRESSED_WITH:
            continue
        for window_bits in _DECOMPRESSED_WITH[encoding]:
            decompressor = zlib.decompressobj(window_bits)
            try:
                decoded = decompressor.decompress(body, MAX_RESPONSE_BYTES + 1)
                break
            except zlib.error as exc:
                error = exc
        else:
            raise UndecodableResponse(
                f"an answer said to be {encoding} is not: {error}",
                request=response.request,
                status=response.status_code,
                headers=response.headers,
            ) from error
        if len(decoded) > MAX_RESPONSE_BYTES or decompressor.unconsumed_tail:
            raise ResponseTooLarge(
                f"an answer over {MAX_RESPONSE_BYTES} bytes once decompressed",
                request=response.request,
                status=response.status_code,
            )
        body = decoded
    return body


#: zlib's window bits to try for each encoding the client asks for (``ACCEPTED_ENCODINGS``):
#: gzip's header; for HTTP's "deflate", zlib's header (47 takes gzip's too), else none at
#: all, as some servers send it (and httpx took it).
_DECOMPRESSED_WITH = {"gzip": (31,), "x-gzip": (31,), "deflate": (47, -15)}
ACCEPTED_ENCODINGS = "gzip, deflate"


def outbound_client(
    max_connections: int,
    timeout: float = 5.0,
    per_host: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """The client connectors send with; ``timeout`` is each request's, unless it sets its own.
    A connector that shows a client certificate has its own, with its ``tls``."""
    return OutboundClient(
        transport=outbound_transport(max_connections, per_host, tls),
        timeout=timeout,
        # Only what ``_decoded`` undoes with a bound: httpx offers br and zstd too when
        # their packages are installed.
        headers={"Accept-Encoding": ACCEPTED_ENCODINGS},
    )


def client_certificate_tls(
    key_file: Path, cert_file: Path, trusted: Iterable[Path] = (), *, password: str | None = None
) -> ssl.SSLContext:
    """TLS that verifies servers as httpx does, also trusting the certificates in
    ``trusted`` (PEM files), and shows the client certificate ``cert_file`` (its key
    ``key_file`` encrypted with ``password``, if given)."""
    context = httpx.create_ssl_context()
    # ssl's errors name no file ("No such file or directory", "PEM lib"): these do.
    for path in trusted:
        try:
            context.load_verify_locations(cafile=path)
        except OSError as exc:
            raise ValueError(f"the certificates to trust in {path} cannot be read: {exc}") from exc
    try:
        # Without a password, an encrypted key would make OpenSSL ask on the terminal.
        context.load_cert_chain(cert_file, key_file, password=password or "")
    except OSError as exc:  # ssl.SSLError among them: a wrong passphrase, say
        raise ValueError(
            f"the client certificate {cert_file} and its key {key_file} cannot be read as PEM,"
            f" or do not match: {exc}"
        ) from exc
    return context
