"""The ``hub`` command."""

from __future__ import annotations

import gc
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE

from hub.components import BY_NAME
from hub.invoice_cli import app as invoice_app
from kernel.auth import issue_token
from kernel.logs import configure_logging
from kernel.settings import HubSettings, get_settings
from kernel.telemetry import configure_tracing
from kernel.tenants import TenantConfigError, load_tenants

app = typer.Typer(
    help="The e-government integration hub.", no_args_is_help=True, add_completion=False
)
app.add_typer(invoice_app, name="invoice")

_COMPONENT_NAMES = list(BY_NAME)
#: Made from the components themselves: a list written by hand named three of the six.
SERVE_COMPONENT_HELP = f"{', '.join(_COMPONENT_NAMES[:-1])} or {_COMPONENT_NAMES[-1]}"


def _settings() -> HubSettings:
    """The hub's settings, or a line per wrong one and exit code 2 (not a traceback)."""
    try:
        return get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            variable = name if name.isupper() else f"HUB_{name.upper()}"  # aliases are upper
            where = f"{variable}: " if name else ""  # a rule of several settings names them
            typer.echo(f"hub: {where}{error['msg']}", err=True)
        raise typer.Exit(2) from None


@app.command()
def up(
    broker_port: Annotated[
        int, typer.Option(help="Port of the embedded Kafka broker", min=1, max=65535)
    ] = 9092,
) -> None:
    """Run the whole hub on this machine: broker, sandbox, services, gateway, dashboard."""
    from hub.supervisor import run_hub

    raise typer.Exit(run_hub(_settings(), broker_port))


@app.command()
def serve(
    component: Annotated[str, typer.Argument(help=SERVE_COMPONENT_HELP)],
    port: Annotated[int | None, typer.Option(help="Port (default: the component's own)")] = None,
) -> None:
    """Run one component in the foreground (what `hub up` and docker-compose start)."""
    if component not in BY_NAME:
        raise typer.BadParameter(f"unknown component {component!r}; one of {', '.join(BY_NAME)}")
    settings = _settings()
    configure_logging(component)
    configure_tracing(component, settings.otlp_endpoint)
    target = BY_NAME[component]
    config = uvicorn.Config(
        target.factory,
        factory=True,
        host=settings.host,
        port=port or target.port,
        log_config=None,
        access_log=False,
    )
    if component == "sandbox":
        SandboxServer(config, settings).run()
    else:
        FrozenAfterStartupServer(config).run()


class FrozenAfterStartupServer(uvicorn.Server):
    """uvicorn's server, which moves what the start-up made out of the garbage collector's sight.

    A component holds 150,000 objects or more once started (modules, routes,
    models, schemas), which live as long as the process. Python's full
    collection visits all of them, and stops the event loop meanwhile: 60-95 ms
    on a 2-core AMD EPYC host, about once a minute per process under the spine
    benchmark's load (measured). Frozen after start-up (``gc.freeze``), they are
    never visited again, and those collections took 2-4 ms; what the process
    makes afterwards is collected as before.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the application's lifespan start-up included
        gc.collect()  # the start-up's own garbage is not kept for ever
        gc.freeze()


class SandboxServer(FrozenAfterStartupServer):
    """The sandbox: its listener, and the TLS one that asks for client certificates
    (``sandbox.tls``), serving the same application."""

    def __init__(self, config: uvicorn.Config, settings: HubSettings) -> None:
        super().__init__(config)
        self.hub_settings = settings

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        from sandbox.tls import start_tls_listener

        await super().startup(sockets)
        try:
            await start_tls_listener(self, self.hub_settings)
        except OSError as exc:  # the port taken, a key unreadable: stop as uvicorn stops
            logging.getLogger("sandbox").error(
                "the TLS listener cannot start on port %d (HUB_SANDBOX_TLS_PORT): %s",
                self.hub_settings.sandbox_tls_port,
                exc,
            )
            await self.shutdown(sockets)
            sys.exit(STARTUP_FAILURE)


@app.command()
def topics() -> None:
    """Wait for the Kafka cluster and create the hub's topics (docker-compose runs this once)."""
    import asyncio

    from aiokafka.errors import KafkaError

    from hub.supervisor import prepare_development_material
    from kernel.kafka import TOPICS, BrokerError, ensure_topics, wait_for_broker

    settings = _settings()
    if not settings.kafka_bootstrap_servers:
        raise typer.BadParameter("set KAFKA_BOOTSTRAP_SERVERS to the cluster to prepare")
    if settings.environment == "development":
        # Before any process starts, so replicas starting together find the keys made.
        prepare_development_material(settings)
    try:
        asyncio.run(wait_for_broker(settings.kafka_bootstrap_servers, timeout=120))
        asyncio.run(ensure_topics(settings.kafka_bootstrap_servers))
    except (BrokerError, KafkaError) as exc:
        typer.echo(f"hub topics failed: {exc or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    typer.echo("topics ready: " + ", ".join(f"{t} ({p} partitions)" for t, p in TOPICS.items()))


@app.command()
def token(
    tenant: Annotated[str, typer.Option(help="5-digit NIS code of the tenant")],
    scope: Annotated[list[str], typer.Option(help="Scope; repeat for several")],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds", min=1)] = 3600,
    subject: Annotated[str, typer.Option(help="Who the token is for")] = "dev",
) -> None:
    """Print a development bearer token signed by the hub's own issuer."""
    if not (len(tenant) == 5 and tenant.isascii() and tenant.isdigit()):
        raise typer.BadParameter("the tenant is a 5-digit NIS code, e.g. 92137")
    settings = _settings()
    if settings.jwks_url:
        typer.echo(
            "hub token: HUB_JWKS_URL is set, so the hub accepts only your OIDC provider's"
            " tokens; ask it for one (a token of the development issuer would be refused).",
            err=True,
        )
        raise typer.Exit(2)
    typer.echo(issue_token(settings, tenant, scope, subject=subject, ttl=ttl))


@app.command()
def demo(
    count: Annotated[int, typer.Option(help="How many documents per service", min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every delivery")] = 120.0,
    tenant: Annotated[str, typer.Option(help="Tenant the demo acts for")] = "92137",
) -> None:
    """Drive realistic traffic through a running hub and report outcomes."""
    from hub.demo import print_table, run_demo

    settings = _settings()
    # Checked before any traffic: a tenant the hub does not serve is a mistake in the
    # command, not an outcome of the services (the demos read its file and crashed).
    try:
        configured = load_tenants(settings.tenants_dir)
    except TenantConfigError as exc:
        typer.echo(f"hub demo: {exc}", err=True)
        raise typer.Exit(2) from None
    if tenant not in configured:
        typer.echo(
            f"hub demo: tenant {tenant} is not configured (no {tenant}.yaml in"
            f" {settings.tenants_dir}, HUB_TENANTS_DIR); configured: {', '.join(configured)}",
            err=True,
        )
        raise typer.Exit(2)
    results = run_demo(
        settings, count=count, timeout=timeout, tenant=tenant, show_progress=not as_json
    )
    if as_json:
        typer.echo(json.dumps({name: result.as_dict() for name, result in results.items()}))
    else:
        print_table(results)
    if not all(result.all_accounted_for() for result in results.values()):
        raise typer.Exit(1)


def main() -> None:
    sys.path.insert(0, str(Path.cwd()))
    app()


if __name__ == "__main__":
    app()
