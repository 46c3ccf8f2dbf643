"""docker-compose.yml and the Dockerfile agree with the code they run.

The compose file is only read here (no Docker needed): every component runs
`hub serve NAME` on its own port, every variable it sets is one the code reads,
Kafka and PostgreSQL are where the variables say, and Kafka accepts the hub's
largest records.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from contracts.asyncapi import build_document
from hub.components import COMPONENTS
from kernel.kafka import MAX_REQUEST_BYTES, TOPICS
from kernel.settings import REPOSITORY_ROOT, HubSettings, normalise_database_url
from kernel.tenants import expand_environment

COMPOSE_FILE = REPOSITORY_ROOT / "docker-compose.yml"
DOCKERFILE = REPOSITORY_ROOT / "Dockerfile"
HUB_IMAGE_COMMAND = "hub"
#: Variables the official images read themselves.
POSTGRES_IMAGE_VARIABLES = {
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "POSTGRES_INITDB_ARGS",
    "PGDATA",
}
DEPENDENCY_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def hub_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the hub's own image (a `hub …` command)."""
    return {name: s for name, s in services.items() if command(s)[:1] == [HUB_IMAGE_COMMAND]}


def command(service: dict[str, Any]) -> list[str]:
    value = service.get("command", [])
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    value = service.get("environment") or {}
    if isinstance(value, list):  # the `- NAME=value` form
        value = dict(item.split("=", 1) if "=" in item else (item, "") for item in value)
    return {str(name): "" if v is None else str(v) for name, v in value.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    value = service.get("depends_on") or {}
    if isinstance(value, list):
        return {name: "service_started" for name in value}
    return {name: spec.get("condition", "service_started") for name, spec in value.items()}


def container_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def dockerfile_environment() -> dict[str, str]:
    """The ENV of the Dockerfile's last stage (the image the services run)."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    final_stage = re.split(r"(?m)^FROM\s", text)[-1]
    variables: dict[str, str] = {}
    for line in final_stage.splitlines():
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                name, _, value = token.partition("=")
                variables[name] = value
    return variables


def variables_the_code_reads() -> set[str]:
    """HubSettings' variables (prefix or alias) and the tenant files' ${VAR} references."""
    prefix = str(HubSettings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in HubSettings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        else:
            names.add((prefix + field_name).upper())
    for path in (REPOSITORY_ROOT / "config" / "tenants").glob("*.yaml"):
        names.update(interpolations(yaml.safe_load(path.read_text(encoding="utf-8"))))
    return names


def interpolations(node: object) -> set[str]:
    """The ${VAR} references in a YAML document's keys and values (not in its comments)."""
    if isinstance(node, dict):
        return {
            name
            for key, value in node.items()
            for name in interpolations(key) | interpolations(value)
        }
    if isinstance(node, list):
        return {name for value in node for name in interpolations(value)}
    return set(_REFERENCE.findall(node)) if isinstance(node, str) else set()


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> HubSettings:
    """The settings a container of ``service`` gets: image ENV, then compose environment."""
    for name in variables_the_code_reads():
        monkeypatch.delenv(name, raising=False)
    values = {**dockerfile_environment(), **environment(service)}
    for name, value in values.items():
        monkeypatch.setenv(name, expand_environment(value, environ={}))
    return HubSettings()


# -- the components -------------------------------------------------------------


def test_every_component_is_a_service_serving_it_on_its_port(
    services: dict[str, dict[str, Any]],
) -> None:
    for component in COMPONENTS:
        assert component.name in services, f"no service for component {component.name}"
        service = services[component.name]
        assert command(service) == ["hub", "serve", component.name]
        assert component.port in container_ports(service), service.get("ports")
        probe = " ".join(command({"command": service["healthcheck"]["test"]}))
        assert f"127.0.0.1:{component.port}/healthz" in probe


def test_the_hub_services_share_one_image_and_the_var_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    hub = hub_services(services)
    assert {service.get("image") for service in hub.values()} == {hub["gateway"]["image"]}
    var_dir = dockerfile_environment()["HUB_VAR_DIR"]
    for name, service in hub.items():
        mounts = [str(volume).split(":")[:2] for volume in service.get("volumes", [])]
        assert ["hub-var", var_dir] in mounts, f"{name} does not mount hub-var at {var_dir}"


def test_the_image_is_slim_non_root_and_listens_on_every_interface() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.findall(r"(?m)^FROM (\S+)", text)[-1] == "python:3.11-slim"
    users = re.findall(r"(?m)^USER (\S+)", text)
    assert users and users[-1] not in {"root", "0"}
    assert dockerfile_environment()["HUB_HOST"] == "0.0.0.0"


# -- environment variables ---------------------------------------------------------


def test_every_variable_set_is_one_the_code_reads(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    known = variables_the_code_reads()
    hub = hub_services(services)
    for name, service in services.items():
        variables = set(environment(service))
        if name in hub:
            assert variables <= known, f"{name}: {sorted(variables - known)} are read by no code"
        elif name == "kafka":  # apache/kafka: KAFKA_<property> and the KRaft cluster id
            assert all(v.startswith("KAFKA_") or v == "CLUSTER_ID" for v in variables)
        elif name == "postgres":
            assert variables <= POSTGRES_IMAGE_VARIABLES
        else:
            pytest.fail(f"service {name}: which variables does its image read?")
    assert set(dockerfile_environment()) - {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"} <= known
    assert interpolations(compose) <= known, sorted(interpolations(compose) - known)


def test_each_hub_service_gets_valid_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production validator would refuse a half-configured process: this runs it."""
    for service in hub_services(services).values():
        settings = settings_of(service, monkeypatch)
        assert settings.host == "0.0.0.0"
        assert settings.kafka_bootstrap_servers and settings.database_url
        if settings.environment == "development":
            assert settings.jwks_url is None  # the shared var volume holds the issuer key


def test_kafka_bootstrap_servers_name_the_kafka_listener(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka = environment(services["kafka"])
    # "PLAINTEXT://kafka:9092,HOST://127.0.0.1:29092" → {"kafka:9092", "127.0.0.1:29092"}
    advertised = {
        listener.split("://", 1)[1] for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for name, service in hub_services(services).items():
        bootstrap = environment(service).get("KAFKA_BOOTSTRAP_SERVERS", "")
        assert bootstrap in advertised, f"{name}: {bootstrap} is no listener of the kafka service"
        assert bootstrap.split(":")[0] == "kafka"
    # The AsyncAPI document's production server is that same listener.
    assert build_document()["servers"]["production"]["host"] in advertised


def test_database_url_names_the_postgres_service(services: dict[str, dict[str, Any]]) -> None:
    postgres = environment(services["postgres"])
    assert services["postgres"]["image"].startswith("postgres:16")
    for name, service in hub_services(services).items():
        url = urlsplit(normalise_database_url(environment(service)["DATABASE_URL"]))
        assert url.scheme == "postgresql+asyncpg", name
        assert url.hostname == "postgres" and (url.port or 5432) == 5432, name
        assert url.username == postgres["POSTGRES_USER"], name
        assert url.password == postgres["POSTGRES_PASSWORD"], name
        assert url.path.lstrip("/") == postgres["POSTGRES_DB"], name


# -- start order -------------------------------------------------------------------


def test_depends_on_names_services_with_conditions_they_can_meet(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert condition in DEPENDENCY_CONDITIONS, f"{name}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dependency].get("restart", "no") == "no", dependency


def test_the_topics_service_runs_hub_topics_before_any_kafka_user(
    services: dict[str, dict[str, Any]],
) -> None:
    topics = services["topics"]
    assert command(topics) == ["hub", "topics"]
    assert depends_on(topics).get("kafka") == "service_healthy"
    for component in COMPONENTS:
        if component.name == "sandbox":  # the sandbox never touches Kafka
            continue
        conditions = depends_on(services[component.name])
        assert conditions.get("topics") == "service_completed_successfully", component.name
        assert conditions.get("postgres") == "service_healthy", component.name


# -- Kafka -----------------------------------------------------------------------


def test_kafka_accepts_the_largest_records_and_creates_no_topic_itself(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka = environment(services["kafka"])
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker" in kafka["KAFKA_PROCESS_ROLES"] and "controller" in kafka["KAFKA_PROCESS_ROLES"]
    assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) >= MAX_REQUEST_BYTES
    assert int(kafka["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= int(kafka["KAFKA_MESSAGE_MAX_BYTES"])
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_gateway_replicas_do_not_exceed_the_partitions(services: dict[str, dict[str, Any]]) -> None:
    replicas = int(services["gateway"].get("deploy", {}).get("replicas", 1))
    assert 1 <= replicas <= min(TOPICS.values())


def test_the_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = set(Path(REPOSITORY_ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".venv", "var", ".git"} <= ignored


def test_every_tenant_files_variable_reaches_the_processes_that_read_it(
    services: dict[str, dict[str, Any]],
) -> None:
    # Compose passes a container only what it lists: a tenant's secret left out kept the
    # committed sandbox default in force (WS4PM passwords, e-Box client secrets).
    referenced: set[str] = set()
    for path in (REPOSITORY_ROOT / "config" / "tenants").glob("*.yaml"):
        referenced |= interpolations(yaml.safe_load(path.read_text(encoding="utf-8")))
    passwords = {name for name in referenced if name.startswith("WS4PM_PASSWORD_")}
    assert passwords and passwords <= set(environment(services["meeting"]))
    gateway = set(environment(services["gateway"]))
    assert referenced - passwords <= gateway, sorted(referenced - passwords - gateway)
