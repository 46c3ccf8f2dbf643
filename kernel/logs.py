"""Logging: one format for every process, and national numbers masked in every record."""

from __future__ import annotations

import logging
import re
import time

from contracts.identifiers import check_niss, mask_niss

# 11 digits, bare or punctuated as people write them (85.07.30-033.28, 850730-033-28,
# 85 07 30 033 28), not inside a longer number.
_NISS_LIKE = re.compile(r"(?<![0-9])(\d{2}[-. ]?\d{2}[-. ]?\d{2}[-. ]?\d{3}[-. ]?\d{2})(?![0-9])")


def mask_national_numbers(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        try:
            return mask_niss(check_niss(match.group(1)))
        except ValueError:
            return match.group(1)  # not a valid NISS: an ordinary number

    return _NISS_LIKE.sub(replace, text)


class NationalNumbersMasked(logging.Formatter):
    """The record as written, national numbers masked: its message and its traceback,
    which quotes exceptions' texts (a database error quotes its statement's values)."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_national_numbers(super().format(record))


class RepeatsOnceInAWhile(logging.Filter):
    """A library's same message (aiokafka's "Unable connect to node", a hundred a second
    while the broker is away) once per ``every`` seconds, with how many were left out:
    the log says what is wrong without filling the disk."""

    def __init__(self, prefixes: tuple[str, ...], every: float = 30.0) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._every = every
        self._last: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        shown_at, left_out = self._last.get(key, (float("-inf"), 0))
        if now - shown_at < self._every:
            self._last[key] = (shown_at, left_out + 1)
            return False
        if len(self._last) > 1000:  # messages built with their values: no key repeats
            self._last.clear()
        self._last[key] = (now, 0)
        if left_out:
            record.msg = f"{record.getMessage()} (and {left_out} more like it since)"
            record.args = None
        return True


def configure_logging(component: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        NationalNumbersMasked(f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RepeatsOnceInAWhile(("aiokafka",)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "httpx", "zeep", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
