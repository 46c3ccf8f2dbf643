"""Logging: one format for every process, and national numbers masked in every record."""

from __future__ import annotations

import logging
import re

from contracts.identifiers import check_niss, mask_niss

# 11 digits, bare or punctuated like 85.07.30-033.28, not inside a longer number.
_NISS_LIKE = re.compile(r"(?<![0-9])(\d{2}\.?\d{2}\.?\d{2}[-.]?\d{3}\.?\d{2})(?![0-9])")


def mask_national_numbers(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        try:
            return mask_niss(check_niss(match.group(1)))
        except ValueError:
            return match.group(1)  # not a valid NISS: an ordinary number

    return _NISS_LIKE.sub(replace, text)


class NationalNumberMasking(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_national_numbers(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def configure_logging(component: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(NationalNumberMasking())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "httpx", "zeep", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
