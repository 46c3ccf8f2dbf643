"""``hub up``'s checks before it starts anything: ports, addresses, the embedded broker."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from hub.cli import app
from hub.supervisor import StartError, _port_is_free, local_url
from kernel.kafka import BrokerError, EmbeddedBroker


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
