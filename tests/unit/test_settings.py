"""kernel.settings: the gateway's poll pauses, one per source or one for all."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

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
