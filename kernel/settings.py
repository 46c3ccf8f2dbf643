"""One settings loader for every process.

Every process reads the same environment variables, so ``hub up``,
``docker-compose.yml`` and the tests configure the hub the same way.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from kernel.kafka import FETCH_MAX_WAIT_MS

#: Default ports on 127.0.0.1, one per process.
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 8000,
    "courrier": 8001,
    "factures": 8002,
    "urban": 8003,
    "meeting": 8004,
    "sandbox": 8010,
}

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
#: What a PostgreSQL ``DATABASE_URL`` may say besides where the database is: libpq's
#: ``sslmode`` (asyncpg's ``ssl``), ``sslrootcert``, ``sslcert``, ``sslkey`` and
#: ``connect_timeout``, which ``kernel.database.create_engine`` says in asyncpg's words,
#: and the few that asyncpg (or SQLAlchemy) takes as text. SQLAlchemy hands asyncpg any
#: other as it is, and an unknown one stopped the start with a TypeError.
POSTGRES_URL_PARAMETERS = (
    "host",  # a Unix socket's directory, or one of the hosts to fail over to (host:port)
    "port",
    "ssl",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "target_session_attrs",
    "passfile",
    "prepared_statement_cache_size",
)
#: The ``iss`` of the tokens the hub issues itself, in development.
DEVELOPMENT_ISSUER = "urn:hub:dev-issuer"


class HubSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    #: Where embedded state lives: SQLite files, development keys, broker port file. The
    #: checkout's, like the tenants': relative to the working directory, a `hub token` or
    #: `hub demo` run elsewhere made itself a new issuer key, and the hub refused its tokens.
    var_dir: Path = REPOSITORY_ROOT / "var"
    #: Tenant routing tables and connector settings (one YAML file per tenant).
    tenants_dir: Path = REPOSITORY_ROOT / "config" / "tenants"
    #: Third-party contracts (WSDL/XSD, JSON Schemas) read at run time.
    corpus_dir: Path = REPOSITORY_ROOT.parent / "shared" / "corpus"
    host: str = "127.0.0.1"

    #: ``KAFKA_BOOTSTRAP_SERVERS`` (no HUB_ prefix, as in every Kafka tool).
    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    #: How long the broker may hold a consumer's fetch that finds nothing new. The
    #: embedded Tansu sleeps through it, so a record waits up to about half of it at
    #: each hop: it stays short there. A Kafka cluster answers a waiting fetch as soon
    #: as a record arrives, so there 500 ms (``hub up`` on a cluster and the compose
    #: file set it) costs no latency, and an idle consumer asks 2 times a second
    #: instead of 50 (``kernel.kafka.FETCH_MAX_WAIT_MS``, ``benchmarks.broker_hop``).
    kafka_fetch_wait_ms: int = Field(default=FETCH_MAX_WAIT_MS, ge=1, le=30_000)
    #: When ``hub up`` started the embedded broker, which keeps its records in memory only:
    #: what the relays sent to an earlier one, not yet read when it stopped, is gone with it
    #: (``kernel.outbox.OutboxRelay.republish_forgotten``). With its offset: compared with
    #: the outbox's instants. Unset on a Kafka cluster.
    embedded_broker_started_at: AwareDatetime | None = None
    #: ``DATABASE_URL`` of the processes; unset means SQLite under ``var_dir``. With a
    #: SQLite URL each process has its own file in the directory of the URL's file
    #: (``database_url_for``).
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    #: On PostgreSQL each process keeps its tables in schema ``<prefix><process>``;
    #: a prefix lets two hubs (staging and production, or test runs) share a database.
    #: A schema's name starts with a letter or an underscore, as PostgreSQL's names do.
    database_schema_prefix: str = Field(default="", pattern=r"^([a-z_][a-z0-9_]{0,39})?$")

    #: OAuth2: in development the hub is its own issuer; in production an OIDC JWKS URL.
    jwt_issuer: str = DEVELOPMENT_ISSUER
    jwt_audience: str = "hub"
    jwks_url: str | None = None

    #: Largest request body any API accepts, in bytes; below 64 KiB not even an invoice fits.
    max_body_bytes: int = Field(default=12 * 1024 * 1024, ge=64 * 1024)

    sandbox_url: str = "http://127.0.0.1:8010"
    #: The sandbox's TLS listener, which asks each client for its certificate (the
    #: KSZ-BCSS authenticates an institution by it); 0: none. The tenants' files reach
    #: it at ``${HUB_SANDBOX_TLS_URL}``: see ``sandbox_tls_address``.
    sandbox_tls_port: int = Field(default=8011, ge=0, le=65535)
    sandbox_tls_url: str | None = None
    #: The hub's address as the public reaches it (behind a proxy), for the absolute URLs of
    #: public APIs (OParl); unset: the address each request came to.
    public_base_url: str | None = None
    #: Pause between two polls of an outside service by the gateway's inbound adapters
    #: (Peppol access point, NOTICe, oversight outcomes…).
    inbound_poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: The same pause for one source, where it should differ from the others (Peppol
    #: every few seconds for a busy accounts office, NOTICe every minute); unset:
    #: ``inbound_poll_seconds``. Read through ``poll_seconds``.
    peppol_poll_seconds: float | None = Field(default=None, gt=0, le=3600)
    notice_poll_seconds: float | None = Field(default=None, gt=0, le=3600)
    oversight_poll_seconds: float | None = Field(default=None, gt=0, le=3600)
    opinion_poll_seconds: float | None = Field(default=None, gt=0, le=3600)
    #: ``hub up`` rotates a component's log (``var_dir/log``) past this size, keeping
    #: ``LOG_KEEP`` older ones: a hub left running for months must not fill its disk.
    log_max_mb: int = Field(default=20, ge=1, le=100_000)
    #: Memory each meeting process gives to rendered OParl list pages (0: none kept).
    oparl_page_cache_mb: int = Field(default=64, ge=0, le=4096)
    otlp_endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")

    @field_validator(
        "kafka_bootstrap_servers",
        "database_url",
        "jwks_url",
        "peppol_poll_seconds",
        "notice_poll_seconds",
        "oversight_poll_seconds",
        "opinion_poll_seconds",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def poll_seconds(self, source: Literal["peppol", "notice", "oversight", "opinion"]) -> float:
        """The gateway's pause between two polls of ``source``: its own, or the inbound one."""
        own: float | None = getattr(self, f"{source}_poll_seconds")
        return self.inbound_poll_seconds if own is None else own

    @model_validator(mode="after")
    def _an_oidc_provider_names_its_issuer(self) -> HubSettings:
        if self.jwks_url and self.jwt_issuer == DEVELOPMENT_ISSUER:
            raise ValueError(
                "HUB_JWKS_URL is set: HUB_JWT_ISSUER must name that provider's issuer (the"
                " iss claim of its tokens), not the development issuer"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_real_infrastructure(self) -> HubSettings:
        if self.environment == "production":
            missing = [
                name
                for name, value in (
                    ("KAFKA_BOOTSTRAP_SERVERS", self.kafka_bootstrap_servers),
                    ("DATABASE_URL", self.database_url),
                    ("HUB_JWKS_URL", self.jwks_url),
                )
                if not value
            ]
            if missing:
                raise ValueError(
                    "HUB_ENVIRONMENT=production needs "
                    + ", ".join(missing)
                    + " (the embedded broker, SQLite and the development token issuer"
                    " are for development only)"
                )
            if _is_sqlite(self.database_url or ""):
                raise ValueError(
                    "HUB_ENVIRONMENT=production needs a PostgreSQL DATABASE_URL, not SQLite"
                    " (SQLite is for development only)"
                )
        return self

    def sandbox_tls_address(self) -> str:
        """What ``hub up`` gives its processes as ``HUB_SANDBOX_TLS_URL``: the URL set, else
        the listener's on 127.0.0.1; with no listener (port 0), the plain ``sandbox_url``,
        which the KSZ-BCSS connector reaches without a certificate (development only)."""
        if self.sandbox_tls_url:
            return self.sandbox_tls_url
        if self.sandbox_tls_port:
            return f"https://127.0.0.1:{self.sandbox_tls_port}"
        return self.sandbox_url

    def database_url_for(self, process: str) -> str:
        """The SQLAlchemy async URL of ``process``'s own database.

        On PostgreSQL every process shares the URL, each in its own schema. On SQLite
        each has its own file, ``<process>.db``, in ``var_dir`` or in the directory of
        the SQLite ``DATABASE_URL`` (whose file name is not used): sharing one file,
        the processes shared their tables, every relay published every process's
        events, and a process's consumer skipped as already handled an event that
        another process had handled.
        """
        if not self.database_url:
            return f"sqlite+aiosqlite:///{self.var_dir / (process + '.db')}"
        url = normalise_database_url(self.database_url)
        if not _is_sqlite(url):
            return url
        parsed = make_url(url)
        if parsed.database in (None, "", ":memory:"):
            return url  # in memory: each process's own already
        database = Path(parsed.database).parent / (process + ".db")
        return parsed.set(database=str(database)).render_as_string(hide_password=False)

    def database_schema_for(self, process: str) -> str:
        return self.database_schema_prefix + process

    @property
    def keys_dir(self) -> Path:
        return self.var_dir / "keys"


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def normalise_database_url(url: str) -> str:
    """Accept the URLs people paste (postgres://, postgresql+psycopg://, libpq's sslmode)
    and pick the async driver the hub uses. A PostgreSQL URL with a parameter the hub
    does not know (``POSTGRES_URL_PARAMETERS``) is refused, naming it."""
    for prefix in (
        "postgres://",
        "postgresql://",
        "postgresql+psycopg2://",
        "postgresql+psycopg://",
    ):
        if url.startswith(prefix):
            url = "postgresql+asyncpg://" + url[len(prefix) :]
            break
    if url.startswith("postgresql+asyncpg://"):
        # asyncpg calls libpq's sslmode ssl, and takes the same values (require, verify-full…).
        parsed = make_url(url)
        if "sslmode" in parsed.query:
            query = dict(parsed.query)
            query.setdefault("ssl", query.pop("sslmode"))
            parsed = parsed.set(query=query)
            url = parsed.render_as_string(hide_password=False)
        unknown = sorted(set(parsed.query) - set(POSTGRES_URL_PARAMETERS))
        if unknown:  # named, not quoted: the URL holds the password
            raise ValueError(
                f"DATABASE_URL has parameters the hub does not know: {', '.join(unknown)}"
                " (it takes sslmode, "
                + ", ".join(name for name in POSTGRES_URL_PARAMETERS if name != "ssl")
                + ")"
            )
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


@lru_cache
def get_settings() -> HubSettings:
    return HubSettings()
