"""``hub up``: the whole hub on one machine, on its embedded default.

Starts the embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set),
creates the topics and the development keys, then each component as its own
process (``hub serve NAME``), waits for its ``/healthz``, prints what runs
where, and stops everything cleanly on Ctrl-C or when one component dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.components import COMPONENTS, Component
from kernel.auth import load_or_create_issuer_key
from kernel.kafka import CLUSTER_FETCH_WAIT_MS, EmbeddedBroker, ensure_topics, wait_for_broker
from kernel.pki import ensure_tenant_signing_identity
from kernel.settings import HubSettings
from kernel.tenants import load_tenants

console = Console()


class StartError(RuntimeError):
    pass


@dataclass
class Running:
    component: Component
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As uvicorn binds: connections of a hub stopped a moment ago (TIME_WAIT) do not
        # hold the port, a process listening on it does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def prepare_development_material(settings: HubSettings) -> None:
    """Keys the embedded hub needs: the token issuer's and each tenant's signing identity."""
    load_or_create_issuer_key(settings.keys_dir)
    for tenant in load_tenants(settings.tenants_dir):
        ensure_tenant_signing_identity(settings.keys_dir, tenant)


def start_broker(settings: HubSettings, port: int) -> tuple[str, EmbeddedBroker | None]:
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers, None
    if not _port_is_free("127.0.0.1", port):
        raise StartError(
            f"port {port} (embedded broker) is taken; stop what uses it or pass --broker-port"
        )
    broker = EmbeddedBroker(port=port, log_path=settings.var_dir / "log" / "broker.log")
    broker.start()
    return broker.bootstrap_servers, broker


def fetch_wait_for(broker: EmbeddedBroker | None) -> dict[str, str]:
    """On a Kafka cluster, the consumers' fetch wait of a cluster, unless the operator set
    one: the embedded broker's short wait would only make idle consumers ask more often."""
    if broker is not None or "HUB_KAFKA_FETCH_WAIT_MS" in os.environ:
        return {}
    return {"HUB_KAFKA_FETCH_WAIT_MS": str(CLUSTER_FETCH_WAIT_MS)}


def start_component(
    component: Component,
    settings: HubSettings,
    bootstrap: str,
    *,
    port: int | None = None,
    extra_environment: dict[str, str] | None = None,
) -> Running:
    """Start ``hub serve NAME`` as a child process with the hub's settings in its environment."""
    port = port or component.port
    if not _port_is_free(settings.host, port):
        raise StartError(f"port {port} ({component.name}) is taken")
    log_path = settings.var_dir / "log" / f"{component.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ)
    environment.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "HUB_VAR_DIR": str(settings.var_dir),
            "HUB_TENANTS_DIR": str(settings.tenants_dir),
            "HUB_CORPUS_DIR": str(settings.corpus_dir),
            "HUB_SANDBOX_URL": environment.get("HUB_SANDBOX_URL", settings.sandbox_url),
        }
    )
    environment.update(extra_environment or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub.cli", "serve", component.name, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    return Running(component, process, log_path, port)


async def wait_healthy(running: Running, host: str, timeout: float = 60.0) -> None:
    url = f"http://{host}:{running.port}/healthz"
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                raise StartError(
                    f"{running.component.name} exited with code {running.process.returncode}; "
                    f"see {running.log_path}:\n{_tail(running.log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise StartError(
        f"{running.component.name} was not healthy after {timeout}s; see {running.log_path}"
    )


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def stop_all(running: list[Running], broker: EmbeddedBroker | None) -> None:
    for item in reversed(running):
        if item.process.poll() is None:
            item.process.send_signal(signal.SIGTERM)
    for item in reversed(running):
        try:
            item.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            item.process.kill()
            item.process.wait()
    if broker:
        broker.stop()


#: Signals that stop the hub as Ctrl-C does: ``kill``, systemd, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_like_ctrl_c(_signum: int, _frame: object) -> None:
    # Python's default for SIGTERM and SIGHUP ends the process at once, skipping the
    # ``finally`` that stops the components: they run in sessions of their own (so a
    # Ctrl-C reaches the supervisor alone) and would outlive it.
    raise KeyboardInterrupt


def run_hub(settings: HubSettings, broker_port: int) -> int:
    (settings.var_dir / "log").mkdir(parents=True, exist_ok=True)
    running: list[Running] = []
    broker: EmbeddedBroker | None = None
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _stop_like_ctrl_c)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            step = progress.add_task("Preparing development keys", total=None)
            prepare_development_material(settings)
            progress.update(step, description="[green]Development keys ready", completed=1, total=1)

            step = progress.add_task("Starting the Kafka broker", total=None)
            bootstrap, broker = start_broker(settings, broker_port)
            asyncio.run(wait_for_broker(bootstrap))
            asyncio.run(ensure_topics(bootstrap))
            kind = "embedded Tansu" if broker else "external cluster"
            progress.update(
                step, description=f"[green]Kafka ready ({kind}, {bootstrap})", completed=1, total=1
            )

            for component in COMPONENTS:
                step = progress.add_task(f"Starting {component.name}", total=None)
                item = start_component(
                    component, settings, bootstrap, extra_environment=fetch_wait_for(broker)
                )
                running.append(item)
                asyncio.run(wait_healthy(item, settings.host))
                progress.update(
                    step, description=f"[green]{component.name} is up", completed=1, total=1
                )
        _print_table(settings, running, bootstrap)
        return _watch(running)
    except StartError as exc:
        console.print(f"[red]hub up failed:[/red] {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for stop_signal in STOP_SIGNALS:  # a second Ctrl-C must not cut the stopping short
            signal.signal(stop_signal, signal.SIG_IGN)
        console.print("Stopping the hub…")
        stop_all(running, broker)
        console.print("[green]Stopped.[/green]")


def _print_table(settings: HubSettings, running: list[Running], bootstrap: str) -> None:
    table = Table(title="The hub is running (Ctrl-C stops everything)")
    for column in ("component", "URL", "pid", "log"):
        table.add_column(column)
    table.add_row("kafka", bootstrap, "", str(settings.var_dir / "log" / "broker.log"))
    for item in running:
        table.add_row(item.component.name, item.url, str(item.process.pid), str(item.log_path))
    console.print(table)
    gateway = f"http://{settings.host}:8000"
    console.print(f"Dashboard: {gateway}/dashboard   Metrics: <url>/metrics   APIs: <url>/docs")
    console.print("Try: .venv/bin/hub demo --count 50")


def _watch(running: list[Running]) -> int:
    while True:
        for item in running:
            if item.process.poll() is not None:
                console.print(
                    f"[red]{item.component.name} stopped with code "
                    f"{item.process.returncode}[/red]; "
                    f"last lines of {item.log_path}:\n{_tail(item.log_path)}"
                )
                return 1
        time.sleep(0.5)
