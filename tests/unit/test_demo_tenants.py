"""``hub demo`` for a tenant the hub does not serve, or one lacking a service's section:
refused up front by the CLI, and counted failed by each service's demo (no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import hub.cli
import hub.demo
from hub.cli import app
from hub.demo import DemoRun, run_demos
from kernel.settings import HubSettings

#: A tenant with its name only: no Peppol participant, no NOTICe instance, no meetings.
BARE_TENANT = 'tenant: "99999"\nname: Commune sans services\n'


@pytest.fixture
def bare_tenants(tmp_path: Path) -> Path:
    directory = tmp_path / "tenants"
    directory.mkdir()
    (directory / "99999.yaml").write_text(BARE_TENANT, encoding="utf-8")
    return directory


def test_hub_demo_refuses_a_tenant_not_configured_in_one_line(
    bare_tenants: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = HubSettings(var_dir=tmp_path / "var", tenants_dir=bare_tenants)
    monkeypatch.setattr(hub.cli, "get_settings", lambda: settings)

    def no_traffic(*args: object, **kwargs: object) -> None:
        raise AssertionError("the demo ran for a tenant not configured")

    monkeypatch.setattr(hub.demo, "run_demo", no_traffic)

    result = CliRunner().invoke(
        app, ["demo", "--json", "--count", "1", "--tenant", "12345"], terminal_width=200
    )

    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("hub demo: tenant 12345 is not configured")
    assert str(bare_tenants) in line and "configured: 99999" in line
    assert result.stdout == ""  # no JSON line a consumer would take for a run's outcome


async def test_each_demo_counts_a_tenant_not_configured_failed(
    bare_tenants: Path, tmp_path: Path
) -> None:
    settings = HubSettings(var_dir=tmp_path / "var", tenants_dir=bare_tenants)
    run = DemoRun(settings, {}, "12345", count=3, timeout=1, progress=None)

    results = await run_demos(run, ("factures", "meeting", "urban"))

    for name, result in results.items():
        assert (result.submitted, result.delivered, result.failed) == (3, 0, 3), name
        assert not result.all_accounted_for()
        assert "tenant 12345" in result.problems[0], name
    assert results["factures"].as_dict()["rejected"] == 0


async def test_a_tenant_without_a_peppol_participant_fails_factures_saying_so(
    bare_tenants: Path, tmp_path: Path
) -> None:
    settings = HubSettings(var_dir=tmp_path / "var", tenants_dir=bare_tenants)
    run = DemoRun(settings, {}, "99999", count=2, timeout=1, progress=None)

    [result] = (await run_demos(run, ("factures",))).values()

    assert (result.submitted, result.delivered, result.rejected, result.failed) == (2, 0, 0, 2)
    assert result.problems == ["tenant 99999 has no Peppol participant (peppol.participant)"]
