"""A clock a test moves by hand, for the components that take ``clock=``."""

from __future__ import annotations

from datetime import datetime, timedelta

from kernel.database import utcnow


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
