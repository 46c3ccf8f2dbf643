"""``hub up`` (what ``make up`` runs) starts every component and stops them all when stopped.

It runs on the hub's default ports (8000-8010), as a newcomer runs it; the
test skips, saying why, when one of them is taken (a ``make up`` already
running on this machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from kernel.kafka import free_port
from kernel.settings import DEFAULT_PORTS

pytestmark = pytest.mark.integration


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def all_healthy() -> bool:
    for name, port in DEFAULT_PORTS.items():
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        except httpx.HTTPError:
            return False
        if answer.status_code != 200 or answer.json()["component"] != name:
            return False
    return True


@pytest.mark.parametrize("ending", ["SIGTERM", "SIGINT", "terminal closed", "broker died"])
def test_hub_up_runs_every_component_and_stops_them_all_however_it_ends(
    tmp_path: Path, ending: str
) -> None:
    taken = [port for port in DEFAULT_PORTS.values() if port_taken(port)]
    if taken:
        pytest.skip(f"the hub's default ports {taken} are in use (is `make up` running?)")
    environment = {**os.environ, "HUB_VAR_DIR": str(tmp_path / "var")}
    environment.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # its own embedded broker, as on a laptop
    hub = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "up", "--broker-port", str(free_port())],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while not all_healthy():
            assert hub.poll() is None, hub.communicate()[0].decode()
            assert time.monotonic() < deadline, "hub up did not start every component in time"
            time.sleep(0.5)
        children = psutil.Process(hub.pid).children(recursive=True)
        assert len(children) >= len(DEFAULT_PORTS) + 1  # the components and the broker

        if ending == "terminal closed":
            # The operator closed the terminal: SIGHUP, and every later print fails.
            assert hub.stdout is not None
            hub.stdout.close()
            hub.send_signal(signal.SIGHUP)
            hub.wait(timeout=90)
        elif ending == "broker died":
            [broker] = [child for child in children if "broker" in child.cmdline()[1:2]]
            broker.kill()
            output = hub.communicate(timeout=90)[0].decode()
            assert hub.returncode == 1, output
            assert "the embedded Kafka broker stopped" in output and "Stopped." in output
        else:
            hub.send_signal(getattr(signal, ending))
            output = hub.communicate(timeout=90)[0].decode()
            assert hub.returncode == 0, output
            assert "Stopped." in output
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"outlived hub up: {[p.pid for p in alive]}"
        assert [port for port in DEFAULT_PORTS.values() if port_taken(port)] == []
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        for child in children:
            if child.is_running():
                child.kill()
