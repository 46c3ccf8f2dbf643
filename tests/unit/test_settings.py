"""kernel.settings: the gateway's poll pauses, one per source or one for all; the
consumers' fetch wait, and where it reaches them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import gateway.engine
import kernel.consumer
from gateway.engine import DeliveryEngine
from gateway.routing import Route, RoutingTable
from hub.supervisor import broker_environment
from kernel.consumer import EventConsumer
from kernel.kafka import CLUSTER_FETCH_WAIT_MS, FETCH_MAX_WAIT_MS, EmbeddedBroker
from kernel.settings import HubSettings


def test_a_source_polls_at_its_own_pause_or_at_the_inbound_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUB_INBOUND_POLL_SECONDS", "30")
    monkeypatch.setenv("HUB_PEPPOL_POLL_SECONDS", "2.5")
    monkeypatch.setenv("HUB_NOTICE_POLL_SECONDS", "")  # blank, as compose writes an unset one
    settings = HubSettings()
    assert settings.poll_seconds("peppol") == 2.5
    assert settings.poll_seconds("notice") == 30
    assert settings.poll_seconds("oversight") == 30
    assert settings.poll_seconds("opinion") == 30


def test_a_pause_that_is_not_positive_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_OVERSIGHT_POLL_SECONDS", "0")
    with pytest.raises(ValidationError, match="oversight_poll_seconds"):
        HubSettings()


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("HUB_MAX_BODY_BYTES", "0", "max_body_bytes"),  # every POST would get a 413
        ("HUB_MAX_BODY_BYTES", "-1", "max_body_bytes"),
        ("HUB_DATABASE_SCHEMA_PREFIX", "2026_", "database_schema_prefix"),  # no schema name
    ],
)
def test_settings_that_cannot_work_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=field):
        HubSettings()


def test_the_consumers_fetch_wait_is_the_embedded_brokers_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HUB_KAFKA_FETCH_WAIT_MS", raising=False)
    assert HubSettings().kafka_fetch_wait_ms == FETCH_MAX_WAIT_MS == 20
    monkeypatch.setenv("HUB_KAFKA_FETCH_WAIT_MS", "500")
    assert HubSettings().kafka_fetch_wait_ms == 500
    monkeypatch.setenv("HUB_KAFKA_FETCH_WAIT_MS", "0")
    with pytest.raises(ValidationError, match="kafka_fetch_wait_ms"):
        HubSettings()


def test_hub_up_on_a_cluster_gives_the_clusters_fetch_wait_unless_the_operator_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HUB_KAFKA_FETCH_WAIT_MS", raising=False)
    started = datetime(2026, 12, 7, 11, 0, tzinfo=UTC)
    on_cluster = {"HUB_KAFKA_FETCH_WAIT_MS": str(CLUSTER_FETCH_WAIT_MS)}
    assert broker_environment(None, started) == on_cluster
    # The embedded one keeps its 20 ms, and its relays learn when it started.
    embedded = broker_environment(EmbeddedBroker(port=9092), started)
    assert embedded == {"HUB_EMBEDDED_BROKER_STARTED_AT": "2026-12-07T11:00:00+00:00"}
    monkeypatch.setenv("HUB_EMBEDDED_BROKER_STARTED_AT", embedded["HUB_EMBEDDED_BROKER_STARTED_AT"])
    assert HubSettings().embedded_broker_started_at == started
    # Without its offset it could not be compared with the outbox's instants: refused.
    monkeypatch.setenv("HUB_EMBEDDED_BROKER_STARTED_AT", "2026-12-07T11:00:00")
    with pytest.raises(ValidationError, match="timezone"):
        HubSettings()
    monkeypatch.delenv("HUB_EMBEDDED_BROKER_STARTED_AT")
    monkeypatch.setenv("HUB_KAFKA_FETCH_WAIT_MS", "250")
    assert broker_environment(None, started) == {}  # start_component passes the operator's on


class Stop(Exception):
    """Raised by the fake consumer factory: the test has what it wanted."""


async def test_the_services_and_the_gateways_consumers_fetch_with_the_wait_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[int] = []

    def make_consumer(*args: Any, fetch_max_wait_ms: int, **kwargs: Any) -> Any:
        waits.append(fetch_max_wait_ms)
        raise Stop

    monkeypatch.setattr(kernel.consumer, "make_consumer", make_consumer)
    monkeypatch.setattr(gateway.engine, "make_consumer", make_consumer)
    consumer = EventConsumer(component="courrier", sessions=None, handlers={})  # type: ignore[arg-type]
    with pytest.raises(Stop):
        await consumer.run("kafka:9092", "courrier", ["gateway.receipts"], fetch_wait_ms=500)
    route = Route("92137", "mail", "courrier.outgoing_mail.send_requested.v1", "ebox", "fake")
    engine = DeliveryEngine(
        sessions=None,  # type: ignore[arg-type]
        routing=RoutingTable(routes={("92137", route.event_type): [route]}, retry={}),
        connectors={},
    )
    with pytest.raises(Stop):
        await engine.run_consumer("kafka:9092", fetch_wait_ms=250)
    assert waits == [500, 250]


def test_a_sqlite_database_url_gives_each_process_a_file_of_its_own(tmp_path: Path) -> None:
    settings = HubSettings(database_url=f"sqlite:///{tmp_path}/data/hub.db")
    courrier, urban = settings.database_url_for("courrier"), settings.database_url_for("urban")
    # Sharing one file, each process's consumer skipped as handled the events another had.
    assert courrier == f"sqlite+aiosqlite:///{tmp_path}/data/courrier.db"
    assert urban == f"sqlite+aiosqlite:///{tmp_path}/data/urban.db"
    # As without the variable, in the directory given.
    assert HubSettings(var_dir=tmp_path / "data").database_url_for("urban") == urban
    # PostgreSQL's is shared: each process has its own schema there.
    shared = HubSettings(database_url="postgresql://hub@db/hub")
    assert shared.database_url_for("courrier") == shared.database_url_for("urban")


def test_production_refuses_a_sqlite_database_url() -> None:
    production = {
        "environment": "production",
        "kafka_bootstrap_servers": "kafka:9092",
        "jwks_url": "https://idp.example.be/jwks",
        "jwt_issuer": "https://idp.example.be",
    }
    with pytest.raises(ValidationError, match="PostgreSQL DATABASE_URL, not SQLite"):
        HubSettings(**production, database_url="sqlite:////data/hub.db")
    assert HubSettings(**production, database_url="postgresql://hub@db/hub").database_url


def test_the_tenants_reach_the_sandboxs_tls_listener_where_it_listens() -> None:
    assert HubSettings().sandbox_tls_address() == "https://127.0.0.1:8011"
    assert HubSettings(sandbox_tls_port=18011).sandbox_tls_address() == "https://127.0.0.1:18011"
    compose = HubSettings(sandbox_tls_url="https://sandbox:8011", sandbox_tls_port=0)
    assert compose.sandbox_tls_address() == "https://sandbox:8011"
    # No listener: the KSZ-BCSS over plain HTTP, without a certificate (development only).
    assert HubSettings(sandbox_tls_port=0).sandbox_tls_address() == "http://127.0.0.1:8010"
