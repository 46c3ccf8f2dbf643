"""OAuth2 bearer tokens: RS256 JWTs whose claims carry the tenant and the scopes.

In development the hub is its own issuer: a key pair under ``var/keys``
signs tokens (``hub token``) and its JWKS is served on ``/.well-known/jwks.json``.
In production ``HUB_JWKS_URL`` names any OIDC provider's JWKS. A token names
one tenant (claim ``tenant``), and every query is filtered by it: a caller of
one tenant can never read or change another tenant's documents.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, Request

from kernel.errors import ProblemError
from kernel.settings import HubSettings

ISSUER_KEY_FILE = "issuer.key"
KEY_ID = "hub-dev-1"


class Unauthorized(ProblemError):
    def __init__(self, detail: str) -> None:
        super().__init__(401, "unauthorized", "Missing or invalid bearer token", detail)


class IdentityProviderUnavailable(ProblemError):
    """The keys to check a token could not be fetched: the token may well be valid."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            503,
            "identity-provider-unavailable",
            "The identity provider cannot be reached",
            f"The keys that check bearer tokens could not be fetched ({reason}); try again"
            " shortly.",
        )


class Forbidden(ProblemError):
    def __init__(self, detail: str) -> None:
        super().__init__(403, "forbidden", "Not allowed", detail)


@dataclass(frozen=True)
class Caller:
    tenant: str
    scopes: frozenset[str]
    subject: str

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this token lacks the scope {scope!r}")


def load_or_create_issuer_key(keys_dir: Path) -> rsa.RSAPrivateKey:
    path = keys_dir / ISSUER_KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} is not an RSA private key")
        return key
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tmp.chmod(0o600)
    tmp.replace(path)  # atomic: processes starting together agree on one key
    return load_or_create_issuer_key(keys_dir)


def issue_token(
    settings: HubSettings, tenant: str, scopes: list[str], subject: str = "dev", ttl: int = 3600
) -> str:
    key = load_or_create_issuer_key(settings.keys_dir)
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": subject,
        "tenant": tenant,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + ttl,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KEY_ID})


def development_jwks(settings: HubSettings) -> dict[str, Any]:
    public = load_or_create_issuer_key(settings.keys_dir).public_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    jwk.update({"kid": KEY_ID, "use": "sig", "alg": "RS256"})
    return {"keys": [jwk]}


class TokenVerifier:
    """Verifies bearer tokens against the development key or a remote JWKS.

    A token that passed is remembered, by its exact text, until it expires or
    for ``REMEMBER_SECONDS`` at most: a client sends the same token with each
    of its requests, and checking its RS256 signature every time cost 3% of a
    busy courrier's CPU. The same text carries the same signature and claims,
    so only the expiry can change the verdict, and it is checked at each use.
    A key withdrawn from the JWKS stops its tokens within ``REMEMBER_SECONDS``.
    """

    REMEMBER_SECONDS = 300.0
    #: Past this many remembered tokens, the oldest are forgotten first.
    REMEMBER_AT_MOST = 4096

    #: How long fetching the identity provider's keys may take: a request waits for it.
    JWKS_TIMEOUT_SECONDS = 5.0

    #: How far the identity provider's clock may be from the hub's: a token is accepted
    #: this long before its ``iat``/``nbf`` and after its ``exp``. Without it, a provider
    #: one second ahead had its fresh tokens refused ("not yet valid") until the hub's
    #: clock caught up, now and then as the clocks drifted.
    CLOCK_SKEW_SECONDS = 30

    def __init__(self, settings: HubSettings) -> None:
        self._settings = settings
        self._jwks_client = (
            jwt.PyJWKClient(settings.jwks_url, timeout=self.JWKS_TIMEOUT_SECONDS)
            if settings.jwks_url
            else None
        )
        #: One thread of its own for the fetches: PyJWT fetches one at a time, and while the
        #: provider is away the waiting ones held threads of the pool that SQLite's large
        #: statements need.
        self._fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jwks")
        self._dev_key = (
            None if settings.jwks_url else load_or_create_issuer_key(settings.keys_dir).public_key()
        )
        #: token → (the caller it names, when it stops being accepted without a check).
        self._verified: dict[str, tuple[Caller, float]] = {}

    async def verify(self, token: str) -> Caller:
        now = time.time()
        remembered = self._verified.get(token)
        if remembered is not None:
            caller, until = remembered
            if now < until:
                return caller
            del self._verified[token]  # expired: the full check says so, with its message
        caller, expires = self._check(token, await self._signing_key(token))
        if len(self._verified) >= self.REMEMBER_AT_MOST:
            del self._verified[next(iter(self._verified))]  # dicts keep insertion order
        self._verified[token] = (
            caller,
            min(expires + self.CLOCK_SKEW_SECONDS, now + self.REMEMBER_SECONDS),
        )
        return caller

    async def _signing_key(self, token: str) -> Any:
        """The key that signed ``token``: the development key, or the identity provider's
        the token names. The provider's key set is fetched when its copy is five minutes
        old or lacks the token's key, in a worker thread: fetched on the event loop, a
        provider slow to answer stood the whole process still (every request, the relay,
        the consumer) for up to 30 s."""
        if self._jwks_client is None:
            return self._dev_key
        fetched = asyncio.get_running_loop().run_in_executor(
            self._fetcher, self._jwks_client.get_signing_key_from_jwt, token
        )
        try:
            # A request waits its own timeout at most, not the fetches queued before it
            # (cancelled, a fetch still queued is dropped).
            signing_key = await asyncio.wait_for(fetched, self.JWKS_TIMEOUT_SECONDS)
        except TimeoutError as exc:
            raise IdentityProviderUnavailable(
                f"no answer in {self.JWKS_TIMEOUT_SECONDS:g} s"
            ) from exc
        except jwt.PyJWKClientConnectionError as exc:
            raise IdentityProviderUnavailable(str(exc)) from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the bearer token is not valid: {exc}") from exc
        return signing_key.key

    def _check(self, token: str, key: Any) -> tuple[Caller, float]:
        """The caller a token names, and when the token expires; raises ``Unauthorized``."""
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                options={"require": ["exp", "iss", "aud", "tenant"]},
                leeway=self.CLOCK_SKEW_SECONDS,
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the bearer token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the bearer token is not valid: {exc}") from exc
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or not (
            len(tenant) == 5 and tenant.isascii() and tenant.isdigit()
        ):
            raise Unauthorized("the token's tenant claim is not a 5-digit NIS code")
        scope = claims.get("scope", "")
        caller = Caller(
            tenant=tenant,
            scopes=frozenset(scope.split() if isinstance(scope, str) else []),
            subject=str(claims.get("sub", "")),
        )
        return caller, float(claims["exp"])


async def current_caller(request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send an OAuth2 bearer token: 'Authorization: Bearer <jwt>'")
    verifier: TokenVerifier = request.app.state.token_verifier
    return await verifier.verify(token.strip())


CallerDep = Annotated[Caller, Depends(current_caller)]
