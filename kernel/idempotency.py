"""Requests sent again: a POST carrying an ``Idempotency-Key`` header changes things once.

A client that lost the answer to its POST (a timeout, a dropped connection, a
double click) cannot know whether the letter was sent; sent again, it was sent
twice. With the header (the IETF's Idempotency-Key draft), the first request's
change and the key are committed in one transaction, and the answer is kept
with the key: the same request sent again gets that answer, marked
``Idempotent-Replayed: true``, and nothing is changed.

- Keys are the tenant's (from the bearer token): two tenants may use the same.
- The same key with another request (method, path, query or body) is a 422.
- A kept answer is given again to its caller only (the token's subject and scopes): the
  replay is decided before the route checks the caller's scopes, so the same key
  from another caller of the tenant is a 422 of its own.
- The same key while its first request has not finished is a 409: the second
  request's transaction cannot commit its key. So is a key whose change was
  committed but whose answer was not kept (the process stopped between the two).
- A request whose key was committed has its answer kept, whatever its status: a
  route that committed its change and then failed is answered the same again,
  not 409 for a day. A request refused before anything was committed left no
  key: it may be sent again, corrected, with the same key.
- Keys are kept for ``KEEP_FOR``: an older key is as if it had never been used.
- A request with a key whose token cannot be checked (the identity provider does not
  answer) is a 503 at once: it is never run without its key.

The middleware works where the service's routes change things through
``kernel.api.Storage.unit_of_work``, which writes the key (``claiming_key``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, LargeBinary, String, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel.auth import Caller, IdentityProviderUnavailable, Unauthorized
from kernel.database import Base, UtcDateTime, utcnow, write_transaction
from kernel.errors import ProblemError, internal_error, problem_response

log = logging.getLogger(__name__)

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 200
#: Answers larger than this are not kept (the hub's answers are views of a few kB).
MAX_KEPT_ANSWER_BYTES = 1024 * 1024
KEEP_FOR = timedelta(hours=24)
#: Every this many kept answers, the expired keys are deleted (an expired key is
#: ignored and replaced before then: ``_kept``, ``claiming_key``).
PURGE_EVERY = 500
#: A fingerprint is two SHA-256s of this many hex digits (128 bits) each, in the
#: column's 64: who sent the request, then what it was (``_fingerprint``).
HALF_FINGERPRINT = 32


class IdempotentRequest(Base):
    __tablename__ = "hub_idempotent_requests"

    tenant: Mapped[str] = mapped_column(String(5), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    #: Who sent the request and what it was (``_fingerprint``): the same key from another
    #: caller, or with another request, is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    #: The kept answer; None until it is kept (or if the process stopped before).
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    media_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    location: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


@dataclass
class _Claim:
    tenant: str
    key: str
    fingerprint: str
    #: When the claim was written: it tells this request's key from the same key
    #: claimed again after this request's transaction was rolled back.
    claimed_at: datetime | None = None


#: The key of the request being served, if it carries one.
_CURRENT: ContextVar[_Claim | None] = ContextVar("idempotency_claim", default=None)


class KeyInUse(ProblemError):
    def __init__(self) -> None:
        super().__init__(
            409,
            "idempotency-key-in-use",
            "Idempotency-Key in use",
            "A request with this Idempotency-Key is being processed, or was processed without"
            " its answer being kept. Send it again in a moment to get its answer; if this"
            " persists, look the document up before sending it under a new key.",
        )


@asynccontextmanager
async def claiming_key(
    transaction: AbstractAsyncContextManager[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """``transaction``'s session, the current request's key written in it first.

    Written first, so that a second request with the key waits for the first's
    transaction (PostgreSQL) or its turn (SQLite), then fails here, changing nothing.

    The key goes with the request's first committed change: a transaction that ends
    with an exception (rolled back, or its commit failed) gives its claim back, so
    that the request's next unit of work (a step run once more after a race, as
    factures' ``once_more_if_raced`` does) claims the key again rather than
    committing its change without it.
    """
    claim = _CURRENT.get()
    if claim is not None and claim.claimed_at is not None:
        claim = None  # an earlier unit of work of this request committed the key
    try:
        async with transaction as session:
            if claim is not None:
                await _claim(session, claim)
            yield session
    except BaseException:
        if claim is not None:
            claim.claimed_at = None
        raise


async def _claim(session: AsyncSession, claim: _Claim) -> None:
    claim.claimed_at = utcnow()
    # A key older than KEEP_FOR is forgotten: its row (which the purge may not have
    # reached yet) gives way to this request's.
    await session.execute(
        delete(IdempotentRequest).where(
            IdempotentRequest.tenant == claim.tenant,
            IdempotentRequest.key == claim.key,
            IdempotentRequest.created_at < claim.claimed_at - KEEP_FOR,
        )
    )
    try:
        await session.execute(
            insert(IdempotentRequest).values(
                tenant=claim.tenant,
                key=claim.key,
                fingerprint=claim.fingerprint,
                created_at=claim.claimed_at,
            )
        )
    except IntegrityError as exc:
        raise KeyInUse() from exc


class IdempotencyMiddleware:
    """Answers a POST sent again with its ``Idempotency-Key`` from the kept answer.

    Inside the request guard (``kernel.app``), which bounds the body it reads whole.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._kept_since_purge = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", [])) if scope["type"] == "http" else {}
        raw_key = headers.get(HEADER)
        if raw_key is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1")
        if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
            await _problem(
                scope,
                receive,
                send,
                400,
                "bad-idempotency-key",
                "Invalid Idempotency-Key",
                f"An Idempotency-Key is 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            )
            return
        state = scope["app"].state  # the service's FastAPI app (Starlette sets it)
        try:
            caller = await _caller_of(state, headers.get(b"authorization", b""))
        except IdentityProviderUnavailable as exc:
            # Answered here, not by the route: the provider's keys, fetched meanwhile by the
            # thread this check gave up on, let the route's own check pass, and the change
            # was committed without its key; the client, its request timed out, sent it
            # again and it was made twice.
            await _problem(scope, receive, send, exc.status, exc.slug, exc.title, exc.detail)
            return
        if caller is None:  # no valid token: the route answers 401, with nothing to replay
            await self.app(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request_digest = _request_digest(scope, bytes(body))
        fingerprint = _fingerprint(caller, request_digest)
        kept = await _kept(state.sessions, caller.tenant, key)
        if kept is not None:
            if kept.fingerprint == request_digest:
                # Kept by a hub of before the callers were told apart (a day's keys at
                # most): the same request, by the tenant, as that hub compared them.
                fingerprint = kept.fingerprint
            await self._answer_again(kept, fingerprint, scope, receive, send)
            return
        claim = _Claim(caller.tenant, key, fingerprint)
        answer = _Answer()

        async def keep_answer() -> None:
            if claim.claimed_at is not None and answer.keepable and not answer.kept:
                answer.kept = True
                await self._keep(state.sessions, claim, answer)

        token = _CURRENT.set(claim)
        try:
            await self.app(scope, _replaying(bytes(body)), answer.recording(send, keep_answer))
        except Exception:
            # The error handler, outside this middleware, answers 500; if the request's
            # transaction committed before it failed, that answer is the one to keep.
            if claim.claimed_at is not None and answer.status == 0:
                await self._keep(state.sessions, claim, await _internal_error(scope))
            raise
        finally:
            _CURRENT.reset(token)
        await keep_answer()  # an answer whose last part never came

    async def _answer_again(
        self, kept: IdempotentRequest, fingerprint: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        # Another caller may lack the route's scope, which is checked after this: the
        # kept answer is its sender's only.
        if kept.fingerprint[:HALF_FINGERPRINT] != fingerprint[:HALF_FINGERPRINT]:
            await _problem(
                scope,
                receive,
                send,
                422,
                "idempotency-key-of-another-caller",
                "Idempotency-Key of another caller",
                "This Idempotency-Key was used by another caller (another token subject, or"
                " other scopes)."
                " A request needs a key of its own.",
            )
            return
        if kept.fingerprint != fingerprint:
            await _problem(
                scope,
                receive,
                send,
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "This Idempotency-Key was used for another request (another method, path or"
                " body). A new request needs a new key.",
            )
            return
        if kept.status is None:
            problem = KeyInUse()
            await _problem(scope, receive, send, 409, problem.slug, problem.title, problem.detail)
            return
        headers = [(b"idempotent-replayed", b"true")]
        if kept.media_type:
            headers.append((b"content-type", kept.media_type.encode("latin-1")))
        if kept.location:
            headers.append((b"location", kept.location.encode("latin-1")))
        body = kept.body or b""
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": kept.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _keep(
        self, sessions: async_sessionmaker[AsyncSession], claim: _Claim, answer: _Answer
    ) -> None:
        try:
            async with write_transaction(sessions) as session:
                await session.execute(
                    update(IdempotentRequest)
                    .where(  # no row if the claim was rolled back: nothing to keep
                        IdempotentRequest.tenant == claim.tenant,
                        IdempotentRequest.key == claim.key,
                        IdempotentRequest.created_at == claim.claimed_at,
                        IdempotentRequest.status.is_(None),
                    )
                    .values(
                        status=answer.status,
                        media_type=answer.media_type,
                        location=answer.location,
                        body=bytes(answer.body),
                    )
                )
                self._kept_since_purge += 1
                if self._kept_since_purge >= PURGE_EVERY:
                    self._kept_since_purge = 0
                    await session.execute(
                        delete(IdempotentRequest).where(
                            IdempotentRequest.created_at < utcnow() - KEEP_FOR
                        )
                    )
        except Exception:  # the answer went; a replay will be told 409 (KeyInUse)
            log.exception("the answer to idempotency key %r was not kept", claim.key)


class _Answer:
    """The status, headers and body of an answer, as they are sent."""

    def __init__(self) -> None:
        self.status = 0
        self.media_type: str | None = None
        self.location: str | None = None
        self.body = bytearray()
        self.too_large = False
        self.kept = False

    @property
    def keepable(self) -> bool:
        return self.status != 0 and not self.too_large

    def recording(self, send: Send, keep: Callable[[], Awaitable[None]] | None = None) -> Send:
        """``send``, recording what passes; ``keep`` runs before the answer's last part
        goes: kept after it, a client that sent the request again at once, its answer in
        hand, found the key still running and was told 409."""

        async def record_and_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        self.media_type = value.decode("latin-1")[:200]
                    elif name.lower() == b"location":
                        self.location = value.decode("latin-1")[:1000]
            elif message["type"] == "http.response.body":
                if not self.too_large:
                    self.body += message.get("body", b"")
                    self.too_large = len(self.body) > MAX_KEPT_ANSWER_BYTES
                if keep is not None and not message.get("more_body", False):
                    await keep()
            await send(message)

        return record_and_send


#: The header as the OpenAPI document of a POST describes it.
OPENAPI_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    "description": "Any unique text of the client's (a UUID, say). Sent again with the same"
    " request by the same caller, it gets the first answer (header Idempotent-Replayed:"
    " true) and changes nothing; with another request, or by another caller, 422; while"
    " the first runs, 409. Kept 24 hours.",
}


def document_in_openapi(app: Any) -> None:
    """Add the header to every POST of ``app``'s OpenAPI document (the middleware, not
    FastAPI, reads it)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document: dict[str, Any] = generate()
            for path in document.get("paths", {}).values():
                if "post" in path:
                    path["post"].setdefault("parameters", []).append(dict(OPENAPI_PARAMETER))
            app.openapi_schema = document
        schema: dict[str, Any] = app.openapi_schema
        return schema

    app.openapi = openapi


async def _caller_of(state: Any, authorization: bytes) -> Caller | None:
    """The token's caller; None for a missing or invalid token. Raises
    ``IdentityProviderUnavailable`` when the token could not be checked."""
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        caller: Caller = await state.token_verifier.verify(token.strip())
    except Unauthorized:
        return None  # the route answers 401, with nothing to replay
    return caller


async def _kept(
    sessions: async_sessionmaker[AsyncSession], tenant: str, key: str
) -> IdempotentRequest | None:
    """The key's row, unless it is older than ``KEEP_FOR`` (the purge runs seldom)."""
    async with sessions() as session:
        kept: IdempotentRequest | None = await session.scalar(
            select(IdempotentRequest).where(
                IdempotentRequest.tenant == tenant,
                IdempotentRequest.key == key,
                IdempotentRequest.created_at >= utcnow() - KEEP_FOR,
            )
        )
        return kept


async def _internal_error(scope: Scope) -> _Answer:
    """The 500 answer the service's error handler sends, as it is sent."""
    answer = _Answer()

    async def nowhere(message: Message) -> None:
        return None

    response = internal_error(scope.get("path"))
    await response(scope, _replaying(b""), answer.recording(nowhere))
    return answer


def _replaying(body: bytes) -> Receive:
    """The request's body, read once already, given to the app again."""
    given = False

    async def receive() -> Message:
        nonlocal given
        if given:
            return {"type": "http.disconnect"}
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _request_digest(scope: Scope, body: bytes) -> str:
    """SHA-256 of what the request is: its method, path, query and body."""
    request = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b"")):
        request.update(part + b"\0")
    request.update(body)
    return request.hexdigest()


def _fingerprint(caller: Caller, request_digest: str) -> str:
    """Who sent the request (the token's subject and scopes), then what it was: 128 bits
    of a SHA-256 of each, so that a key sent again by another caller is told apart from
    one sent with another request."""
    # Its scopes too: the same subject's token without the route's scope (checked after the
    # replay is decided) is another caller. "surrogatepass": a JSON text (the token's
    # claims) may hold a lone surrogate.
    who = "\0".join([caller.subject, *sorted(caller.scopes)])
    sender = hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()
    return sender[:HALF_FINGERPRINT] + request_digest[:HALF_FINGERPRINT]


async def _problem(
    scope: Scope, receive: Receive, send: Send, status: int, slug: str, title: str, detail: str
) -> None:
    await problem_response(status, slug, title, detail, scope.get("path"))(scope, receive, send)
