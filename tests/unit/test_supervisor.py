"""``hub up``'s checks before it starts anything: ports, addresses, the embedded broker."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub import supervisor
from hub.cli import app
from hub.components import BY_NAME, COMPONENTS
from hub.supervisor import (
    STOP_SIGNALS,
    Running,
    StartError,
    _port_is_free,
    _print_table,
    _watch,
    local_url,
    run_hub,
)
from kernel.kafka import BrokerError, EmbeddedBroker, free_port
from kernel.settings import HubSettings


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port another process listens on, as far as ``hub up`` can tell."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.fixture
def stop_signals_restored() -> Iterator[None]:
    """``run_hub`` takes over Ctrl-C and ignores it once it stops; pytest's own comes back."""
    saved = {stop_signal: signal.getsignal(stop_signal) for stop_signal in STOP_SIGNALS}
    yield
    for stop_signal, handler in saved.items():
        signal.signal(stop_signal, handler)


def printed(capsys: pytest.CaptureFixture[str]) -> str:
    """What the console printed, its lines wrapped at the terminal's width joined again."""
    return " ".join(capsys.readouterr().out.split())


def test_a_port_another_process_listens_on_is_taken_a_free_one_is_not() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert _port_is_free("127.0.0.1", port) is False
    assert _port_is_free("127.0.0.1", port) is True


def test_an_address_this_machine_does_not_have_is_named_not_called_a_taken_port() -> None:
    # TEST-NET-1 (RFC 5737): never an address of this machine.
    with pytest.raises(StartError, match=r"cannot listen on '192\.0\.2\.1' port 8010"):
        _port_is_free("192.0.2.1", 8010)
    with pytest.raises(StartError, match="HUB_HOST"):
        _port_is_free("no such host.invalid", 8010)


def test_the_urls_shown_are_where_this_machine_reaches_the_processes() -> None:
    assert local_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert local_url("::", 8000) == "http://127.0.0.1:8000"
    assert local_url("192.168.1.5", 8001) == "http://192.168.1.5:8001"
    assert local_url("::1", 8002) == "http://[::1]:8002"


def test_a_missing_broker_binary_is_a_broker_error_saying_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(BrokerError, match="KAFKA_BOOTSTRAP_SERVERS"):
        EmbeddedBroker(port=1).start(timeout=1)


def test_a_broker_port_out_of_range_is_refused_before_anything_starts() -> None:
    result = CliRunner().invoke(app, ["up", "--broker-port", "70000"], terminal_width=200)
    assert result.exit_code == 2
    assert "--broker-port" in result.output and "65535" in result.output


@pytest.mark.parametrize(
    "arguments",
    [
        ["token", "--tenant", "92137", "--scope", "x:y", "--ttl", "-60"],  # expired at birth
        ["demo", "--count", "0"],  # nothing to show, yet a success
    ],
)
def test_cli_values_that_cannot_work_are_refused(arguments: list[str]) -> None:
    result = CliRunner().invoke(app, arguments, terminal_width=200)
    assert result.exit_code == 2
    assert "1" in result.output and ("--ttl" in result.output or "--count" in result.output)


@pytest.mark.usefixtures("stop_signals_restored")
def test_hub_up_names_every_taken_port_before_it_starts_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[str] = []
    monkeypatch.setattr(supervisor, "prepare_development_material", started.append)

    def broker(settings: HubSettings, port: int) -> None:
        started.append("broker")
        raise StartError("the broker was about to start")

    monkeypatch.setattr(supervisor, "embedded_broker", broker)
    with listening() as broker_port, listening() as tls_port, listening() as gateway_port:
        components = tuple(
            replace(component, port=gateway_port if component.name == "gateway" else free_port())
            for component in COMPONENTS
        )
        monkeypatch.setattr(supervisor, "COMPONENTS", components)
        settings = HubSettings(var_dir=tmp_path / "var", sandbox_tls_port=tls_port)

        assert run_hub(settings, broker_port) == 1

    assert started == []
    assert (
        f"hub up failed: ports taken: {broker_port} (embedded broker; or pass --broker-port),"
        f" {tls_port} (sandbox TLS; or set HUB_SANDBOX_TLS_PORT (0: none)),"
        f" {gateway_port} (gateway); stop what listens there"
    ) in printed(capsys)


def test_a_stopped_component_s_last_log_lines_are_printed_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # SQLAlchemy's "[parameters: ...]" vanished as a style tag; "[/...]" made rich raise.
    lines = ["[parameters: (1, 2)]", "x [/usr/lib/python3.11/asyncio] y", "[bold]as is[/bold]"]
    log_path = tmp_path / "courrier.log"
    log_path.write_text("\n".join(["started", *lines]) + "\n", encoding="utf-8")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()

    assert _watch([Running(BY_NAME["courrier"], process, log_path, 8001)], None, 1 << 20) == 1

    output = capsys.readouterr().out
    assert "courrier stopped with code 3" in output
    assert all(line in output.splitlines() for line in lines)


@pytest.mark.parametrize(
    ("host", "dashboard"),
    [
        ("::", "http://127.0.0.1:8000/dashboard"),
        ("0.0.0.0", "http://127.0.0.1:8000/dashboard"),
        ("::1", "http://[::1]:8000/dashboard"),
    ],
)
def test_the_dashboard_line_shows_where_this_machine_reaches_the_gateway(
    host: str, dashboard: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _print_table(HubSettings(var_dir=tmp_path / "var", host=host), [], "127.0.0.1:9092")
    assert f"Dashboard: {dashboard} " in printed(capsys)
