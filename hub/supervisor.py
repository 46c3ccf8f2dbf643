"""``hub up``: the whole hub on one machine, on its embedded default.

Starts the embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set),
creates the topics and the development keys, then each component as its own
process (``hub serve NAME``), waits for its ``/healthz``, prints what runs
where, and stops everything cleanly on Ctrl-C or when one component dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.components import COMPONENTS, Component
from kernel.auth import load_or_create_issuer_key
from kernel.database import utcnow
from kernel.kafka import (
    CLUSTER_FETCH_WAIT_MS,
    BrokerError,
    EmbeddedBroker,
    ensure_topics,
    wait_for_broker,
)
from kernel.pki import ensure_sandbox_tls_identity, ensure_tenant_signing_identity
from kernel.settings import DEFAULT_PORTS, HubSettings
from kernel.tenants import TenantConfigError, load_tenants

console = Console()


class StartError(RuntimeError):
    pass


@dataclass
class Running:
    component: Component
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int

    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return local_url(self.host, self.port)


def local_url(host: str, port: int) -> str:
    """Where this machine reaches a process listening on ``host:port``: an address it
    listens on, 127.0.0.1 for all of them."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _port_is_free(host: str, port: int) -> bool:
    """Whether a process may listen on ``host:port``; False when another listens there.
    Any other reason to fail (an address this machine does not have, a family it does not
    speak) is a ``StartError`` naming it: it was reported as the port being taken."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
    except (OSError, UnicodeError) as exc:
        raise StartError(f"cannot listen on {host!r} (HUB_HOST): {exc}") from None
    with socket.socket(family, kind, protocol) as sock:
        # As uvicorn binds: connections of a hub stopped a moment ago (TIME_WAIT) do not
        # hold the port, a process listening on it does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise StartError(f"cannot listen on {host!r} port {port}: {exc.strerror}") from None
        return True


def check_ports(settings: HubSettings, broker_port: int) -> None:
    """Every port ``hub up`` is to listen on is free, or a ``StartError`` naming all those
    taken. Checked before anything starts: when each component's port was checked as it
    started, the gateway (started last) was found taken only once everything else ran."""
    # (host, port, what listens there, what moves it: a component's port has no setting)
    wanted: list[tuple[str, int, str, str | None]] = []
    if not settings.kafka_bootstrap_servers:
        wanted.append(("127.0.0.1", broker_port, "embedded broker", "pass --broker-port"))
    for component in COMPONENTS:
        wanted.append((settings.host, component.port, component.name, None))
        if component.name == "sandbox" and settings.sandbox_tls_port:
            tls = "set HUB_SANDBOX_TLS_PORT (0: none)"
            wanted.append((settings.host, settings.sandbox_tls_port, "sandbox TLS", tls))
    taken = [
        f"{port} ({whose}; or {setting})" if setting else f"{port} ({whose})"
        for host, port, whose, setting in wanted
        if not _port_is_free(host, port)
    ]
    if taken:
        raise StartError(
            f"{'ports' if len(taken) > 1 else 'port'} taken: {', '.join(taken)}; stop what"
            " listens there (`lsof -i :PORT` names it)"
        )


def prepare_development_material(settings: HubSettings) -> None:
    """Keys the embedded hub needs: the token issuer's, each tenant's identity, and the
    sandbox's TLS identity."""
    load_or_create_issuer_key(settings.keys_dir)
    for tenant in load_tenants(settings.tenants_dir):
        ensure_tenant_signing_identity(settings.keys_dir, tenant)
    ensure_sandbox_tls_identity(settings.keys_dir)


def embedded_broker(settings: HubSettings, port: int) -> EmbeddedBroker | None:
    """The embedded broker to start, or None on a Kafka cluster. Not started yet: the
    caller holds it first, so that a Ctrl-C while it starts still stops it."""
    if settings.kafka_bootstrap_servers:
        return None
    if not _port_is_free("127.0.0.1", port):
        raise StartError(
            f"port {port} (embedded broker) is taken; stop what uses it or pass --broker-port"
        )
    return EmbeddedBroker(port=port, log_path=settings.var_dir / "log" / "broker.log")


def broker_environment(broker: EmbeddedBroker | None, started_at: datetime) -> dict[str, str]:
    """What the components are told of the broker.

    The embedded broker keeps its records in memory: the relays learn when it started,
    to send again what they sent to an earlier one, gone with it
    (``HUB_EMBEDDED_BROKER_STARTED_AT``). On a Kafka cluster, the consumers' fetch wait
    of a cluster, unless the operator set one: the embedded broker's short wait would
    only make idle consumers ask more often."""
    if broker is not None:
        return {"HUB_EMBEDDED_BROKER_STARTED_AT": started_at.isoformat()}
    if "HUB_KAFKA_FETCH_WAIT_MS" in os.environ:
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
    tls_port = settings.sandbox_tls_port if component.name == "sandbox" else 0
    if tls_port and not _port_is_free(settings.host, tls_port):
        raise StartError(
            f"port {tls_port} (the sandbox's TLS listener) is taken; stop what uses it or set"
            " HUB_SANDBOX_TLS_PORT (0: none)"
        )
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
            "HUB_SANDBOX_TLS_PORT": str(settings.sandbox_tls_port),
            "HUB_SANDBOX_TLS_URL": settings.sandbox_tls_address(),
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
    return Running(component, process, log_path, port, settings.host)


async def wait_healthy(running: Running, host: str, timeout: float = 60.0) -> None:
    url = f"{local_url(host, running.port)}/healthz"
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
    """The last ``lines`` lines of a log, read from its last 64 kB only."""
    with contextlib.suppress(OSError), open(path, "rb") as log:
        log.seek(max(log.seek(0, os.SEEK_END) - 65_536, 0))
        return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])
    return ""


#: The older logs a rotation keeps: ``<name>.log.1`` (the newest) to ``<name>.log.5``.
LOG_KEEP = 5
#: How often ``hub up`` looks at its logs' sizes.
LOG_CHECK_SECONDS = 30.0


def rotate_log(path: Path, max_bytes: int, keep: int = LOG_KEEP) -> bool:
    """Rotate ``path`` once it holds ``max_bytes``: ``.1`` becomes ``.2`` and so on (the
    oldest dropped), a copy of it becomes ``.1``, and it is emptied; True if it was.

    Copied and emptied, not renamed: its writer, a component or the broker, keeps it open
    for appending (``start_component``), so its next line goes to the start of the
    emptied file without being told. A line written between the copy and the emptying is
    lost: the price of rotating without restarting anything.
    """
    try:
        if path.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    for number in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{number}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{number + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


#: How long the components have, all together, to stop after SIGTERM before SIGKILL.
STOP_SECONDS = 10.0


def stop_all(running: list[Running], broker: EmbeddedBroker | None) -> None:
    for item in reversed(running):
        if item.process.poll() is None:
            item.process.send_signal(signal.SIGTERM)
    # One deadline for all: waiting 10 s for each in turn made a stop with the broker
    # gone (every component stuck on it) last a minute.
    deadline = time.monotonic() + STOP_SECONDS
    for item in reversed(running):
        try:
            item.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
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
    # The supervisor's own client only waits for the broker, and says so if it cannot: its
    # connection errors, a hundred lines of them, are no news to the operator.
    quiet = logging.getLogger("aiokafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    running: list[Running] = []
    broker: EmbeddedBroker | None = None
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _stop_like_ctrl_c)
    try:
        check_ports(settings, broker_port)
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

            broker = embedded_broker(settings, broker_port)
            broker_started_at = utcnow()
            if broker is not None:
                step = progress.add_task("Starting the Kafka broker", total=None)
                broker.start()
                bootstrap = broker.bootstrap_servers
            else:
                bootstrap = settings.kafka_bootstrap_servers or ""
                step = progress.add_task(f"Waiting for Kafka at {bootstrap}", total=None)
            asyncio.run(wait_for_broker(bootstrap))
            asyncio.run(ensure_topics(bootstrap))
            kind = "embedded Tansu" if broker else "external cluster"
            progress.update(
                step, description=f"[green]Kafka ready ({kind}, {bootstrap})", completed=1, total=1
            )

            for component in COMPONENTS:
                step = progress.add_task(f"Starting {component.name}", total=None)
                item = start_component(
                    component,
                    settings,
                    bootstrap,
                    extra_environment=broker_environment(broker, broker_started_at),
                )
                running.append(item)
                asyncio.run(wait_healthy(item, settings.host))
                progress.update(
                    step, description=f"[green]{component.name} is up", completed=1, total=1
                )
        _print_table(settings, running, bootstrap)
        return _watch(running, broker, settings.log_max_mb * 1024 * 1024)
    except (StartError, BrokerError, TenantConfigError, KafkaError) as exc:
        _say(f"[red]hub up failed:[/red] {escape(str(exc) or type(exc).__name__)}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for stop_signal in STOP_SIGNALS:  # a second Ctrl-C must not cut the stopping short
            signal.signal(stop_signal, signal.SIG_IGN)
        # Stopped whatever the terminal does: a closed one (SIGHUP) fails every print,
        # and a print before stop_all left every component and the broker running.
        _say("Stopping the hub…")
        stop_all(running, broker)
        _say("[green]Stopped.[/green]")


def _say(text: str) -> None:
    # rich answers a broken pipe (a closed terminal) with SystemExit(1), others with OSError.
    with contextlib.suppress(OSError, SystemExit):
        console.print(text)


def _print_table(settings: HubSettings, running: list[Running], bootstrap: str) -> None:
    table = Table(title="The hub is running (Ctrl-C stops everything)")
    for column in ("component", "URL", "pid", "log"):
        table.add_column(column)
    table.add_row("kafka", bootstrap, "", str(settings.var_dir / "log" / "broker.log"))
    for item in running:
        table.add_row(item.component.name, item.url, str(item.process.pid), str(item.log_path))
        if item.component.name == "sandbox" and settings.sandbox_tls_port:
            address = settings.sandbox_tls_address()
            table.add_row("sandbox (mTLS)", address, str(item.process.pid), "")
    console.print(table)
    # Where this machine reaches the gateway, as the table shows it (not ``HUB_HOST`` as set:
    # "::" or "0.0.0.0" is no address to open).
    gateway = local_url(settings.host, DEFAULT_PORTS["gateway"])
    console.print(f"Dashboard: {gateway}/dashboard   Each URL above: /metrics, /docs (its API)")
    console.print("Try: .venv/bin/hub demo --count 50")


def _watch(running: list[Running], broker: EmbeddedBroker | None, log_max_bytes: int) -> int:
    logs = [item.log_path for item in running]
    if broker is not None and broker.log_path is not None:
        logs.append(broker.log_path)
    logs_checked = time.monotonic()
    while True:
        if time.monotonic() - logs_checked > LOG_CHECK_SECONDS:
            logs_checked = time.monotonic()
            for log_path in logs:
                try:
                    rotate_log(log_path, log_max_bytes)
                except OSError as exc:  # a full disk, a log removed by hand: not a stop
                    _say(f"[yellow]could not rotate {log_path}: {escape(str(exc))}[/yellow]")
        if broker is not None and broker.process is not None and broker.process.poll() is not None:
            _say(
                f"[red]the embedded Kafka broker stopped with code {broker.process.returncode}"
                f"[/red]; see {broker.log_path}"
            )
            return 1
        for item in running:
            if item.process.poll() is not None:
                # Escaped: a log line such as SQLAlchemy's "[parameters: ...]" is no markup,
                # and one holding "[/...]" made rich raise instead of printing the tail.
                _say(
                    f"[red]{item.component.name} stopped with code "
                    f"{item.process.returncode}[/red]; "
                    f"last lines of {escape(str(item.log_path))}:\n{escape(_tail(item.log_path))}"
                )
                return 1
        time.sleep(0.5)
