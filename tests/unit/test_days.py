from datetime import UTC, date, datetime

from kernel.days import commune_day


def test_the_commune_day_turns_at_brussels_midnight_in_summer_and_winter() -> None:
    # Summer time (UTC+2): 22:30 UTC is already the next day in Brussels.
    assert commune_day(datetime(2026, 7, 14, 21, 59, tzinfo=UTC)) == date(2026, 7, 14)
    assert commune_day(datetime(2026, 7, 14, 22, 30, tzinfo=UTC)) == date(2026, 7, 15)
    # Winter time (UTC+1): the day turns an hour later.
    assert commune_day(datetime(2026, 12, 7, 22, 30, tzinfo=UTC)) == date(2026, 12, 7)
    assert commune_day(datetime(2026, 12, 7, 23, 30, tzinfo=UTC)) == date(2026, 12, 8)
