"""The notification letter of a decision: a PDF courrier accepts, saying what the law asks."""

from __future__ import annotations

import re
import zlib
from datetime import UTC, date, datetime
from typing import Any

import pytest

from contracts.events.meeting import ItemDecided
from services.courrier.decision_letters import (
    DecisionLetter,
    french_date,
    printable,
    render,
)
from services.courrier.domain import check_letter

NISS = "85073003328"
ENTERPRISE = "0403170701"
WRITTEN_AT = datetime(2026, 3, 20, 9, 30, tzinfo=UTC)


def decided(**changes: Any) -> ItemDecided:
    data: dict[str, Any] = {
        "item_id": "0b6d1c1e-3f7a-4d59-9d0e-6c3b2a1f0e99",
        "meeting_id": "6a1f0f53-8d2b-4c0e-a7a4-0e3b5c9d2f11",
        "meeting_config": "college",
        "meeting_kind": "college",
        # 23:30 UTC on the 11th is already the 12th in Brussels.
        "meeting_date": datetime(2026, 3, 11, 23, 30, tzinfo=UTC),
        "title": "Permis d'urbanisme : extension d'une habitation, rue Haute 12",
        "decision": "refused",
        "decision_text": "DÉCIDE : de refuser le permis sollicité (projet non conforme).",
        "decision_number": "COL/2026/0042",
        "category": "urbanisme",
        "external_identifier": "URB/2026/0012",
        "oversight_applies": False,
        "publication_required": True,
        "concerned_party": {"kind": "person", "identifier": NISS, "name": "Jeanne Dupont"},
    }
    data.update(changes)
    return ItemDecided.model_validate(data)


def letter(**changes: Any) -> DecisionLetter:
    return DecisionLetter.of(decided(**changes), "Ville de Sambreville", WRITTEN_AT)


def _unescape(literal: bytes) -> bytes:
    escapes = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"(": b"(", b")": b")", b"\\": b"\\"}
    return re.sub(rb"\\(.)", lambda m: escapes.get(m.group(1), m.group(1)), literal)


def pdf_text(pdf: bytes) -> str:
    """The text the PDF shows, its lines joined by spaces: its content streams' text strings."""
    lines = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            content = zlib.decompress(stream)
        except zlib.error:
            continue  # not a compressed content stream (fpdf2 compresses them all)
        for literal in re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", content):
            lines.append(_unescape(literal).decode("windows-1252"))
    return " ".join(" ".join(lines).replace("\u00a0", " ").split())


def test_the_letter_is_a_pdf_that_courrier_accepts_and_that_says_the_decision() -> None:
    pdf = render(letter())
    check_letter(pdf)  # courrier's own check of a letter (PDF signature, 4 MiB at most)
    assert pdf.startswith(b"%PDF-1.") and pdf.rstrip().endswith(b"%%EOF")
    text = pdf_text(pdf)
    for expected in (
        "Ville de Sambreville",
        "Jeanne Dupont",
        "Notre référence : COL/2026/0042",
        "Dossier : URB/2026/0012",
        "Collège communal en sa séance du 12 mars 2026",
        "Décision : la proposition est refusée.",
        "DÉCIDE : de refuser le permis sollicité (projet non conforme).",
        "Voies de recours",
        "Conseil d'État",
        "D.IV.63",  # urbanisme: the appeal to the Walloon Government
        "Le 20 mars 2026",
        "modèle générique",
    ):
        assert expected in text, expected
    # The e-Box authenticates the person: the letter does not print their national number.
    assert NISS not in text and "85.07.30" not in text


def test_an_enterprise_is_named_with_its_number_and_appeals_follow_the_category() -> None:
    party = {"kind": "enterprise", "identifier": f"BE {ENTERPRISE}", "name": "Dupont SA"}
    text = pdf_text(render(letter(concerned_party=party, category="travaux", decision="accepted")))
    assert "Dupont SA" in text and "N° d'entreprise 0403.170.701" in text
    assert "Décision : la proposition est adoptée." in text
    assert "Conseil d'État" in text and "D.IV.63" not in text


def test_the_subject_names_the_body_the_meetings_day_and_the_number() -> None:
    assert letter().subject == "Décision du Collège communal du 12 mars 2026 — COL/2026/0042"
    council = letter(meeting_kind="council", decision_number="CC/2026/0007")
    assert council.subject.startswith("Décision du Conseil communal du 12 mars 2026")


def test_a_long_decision_runs_over_pages_and_is_numbered() -> None:
    paragraph = "Considérant que le dossier a été instruit conformément aux règles ; " * 12
    pdf = render(letter(decision_text="\n".join([paragraph] * 12)))
    text = pdf_text(pdf)
    pages = re.findall(r"page (\d+)/ ?(\d+)", text)
    assert len(pages) >= 2 and all(total == str(len(pages)) for _, total in pages)
    check_letter(pdf)


def test_a_decision_that_notifies_no_one_has_no_letter() -> None:
    with pytest.raises(ValueError, match="notifies no one"):
        letter(concerned_party=None)
    with pytest.raises(ValueError, match="notifies no one"):
        letter(decision="postponed", decision_number=None)


def test_french_dates_and_characters_the_core_fonts_lack() -> None:
    assert french_date(date(2026, 8, 1)) == "1er août 2026"
    assert french_date(date(2026, 12, 31)) == "31 décembre 2026"
    assert printable("Łucja Wąs — Škoda, l’œuvre, €") == "Lucja Was — Škoda, l’œuvre, €"
    assert printable("日本") == "??"
    pdf_text(
        render(letter(concerned_party={"kind": "person", "identifier": NISS, "name": "Łucja"}))
    )
