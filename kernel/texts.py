"""What a text the hub keeps may hold, whoever wrote it (a caller, a target, a sender)."""

from __future__ import annotations

import re

#: The C0 controls but tab, line feed and carriage return, U+FFFE and U+FFFF, and the
#: UTF-16 surrogates. PostgreSQL refuses a NUL in a text (a 500, or a consumer failing again
#: and again, where SQLite stored it), and XML 1.0 has no place for any of them: an item's
#: title with a vertical tab was accepted, then broke every WS4PM answer that carried it. A
#: lone surrogate (JSON's "\ud800") is no character: no UTF-8 encoder writes it, so a
#: target's answer holding one could not be recorded, and its fetch was read for ever.
NOT_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def plain_text(text: str) -> str:
    """``text`` with each character no kept text may hold replaced by U+FFFD: for texts the
    hub keeps as it was given them (a target's error, a record's reason), not refuses."""
    return NOT_IN_TEXT.sub("\N{REPLACEMENT CHARACTER}", text)


def clipped(text: str, longest: int) -> str:
    """``text`` cut to ``longest`` characters, the cut marked by a last "…"."""
    return text if len(text) <= longest else text[: longest - 1] + "…"
