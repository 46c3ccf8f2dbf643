"""The communes' calendar.

Walloon authorities count their days in Brussels time: a registry date, a legal deadline, a
payment date. Between 22:00 (summer) or 23:00 (winter) and midnight UTC, UTC's date is still
the commune's yesterday, so every service takes its "day of" a moment from here.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

BRUSSELS = ZoneInfo("Europe/Brussels")


def commune_day(moment: datetime) -> date:
    """The commune's calendar day of ``moment`` (an aware datetime)."""
    return moment.astimezone(BRUSSELS).date()
