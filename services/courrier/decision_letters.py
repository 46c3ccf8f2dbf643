"""The letter that notifies a college or council decision to the person or company it concerns.

This is a generic template, written for any Walloon commune: the commune's
name comes from its tenant file, everything else from the decision
(``meeting.item.decided.v1``). It names the addressee, the decision's number,
date, title and outcome, quotes the decision's text and states the appeal
routes, as the law on the publicity of administration asks of a notified
individual decision (without them the time to appeal does not start).
A commune with its own letterhead replaces this module, not the rest.

The PDF uses the PDF core fonts (Helvetica, Windows-1252): every reader has
them, so nothing is embedded; a character outside Windows-1252 is printed
without its accent, or as "?".
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

from fpdf import FPDF
from fpdf.enums import Align, XPos, YPos

from contracts.events.meeting import Decision, ItemDecided, MeetingKind
from kernel.days import commune_day

ENCODING = "windows-1252"
#: Letters that Unicode does not decompose into a base letter and an accent.
UNDECOMPOSABLE = str.maketrans({"Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "ı": "i", "ß": "ss"})
NO_BREAK = "\u00a0"
MONTHS = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)
BODIES: dict[MeetingKind, str] = {"college": "Collège communal", "council": "Conseil communal"}
#: The commune's letters are signed by the mayor and countersigned by the director
#: general (Code de la démocratie locale et de la décentralisation, L1132-3).
ON_BEHALF: dict[MeetingKind, str] = {"college": "Par le Collège,", "council": "Par le Conseil,"}
SIGNATORIES = ("Le Directeur général,", "Le Bourgmestre,")
OUTCOMES: dict[Decision, str] = {
    "accepted": "la proposition est adoptée.",
    "accepted_with_amendments": "la proposition est adoptée avec des amendements.",
    "refused": "la proposition est refusée.",
    "postponed": "le point est reporté à une séance ultérieure.",
}
APPEAL = (
    "Si vous estimez que cette décision vous cause grief, vous pouvez introduire un recours "
    "en annulation, assorti le cas échéant d'une demande de suspension, auprès du Conseil "
    "d'État (rue de la Science 33, 1040 Bruxelles, ou par voie électronique), dans les "
    "soixante jours de la notification de la présente décision."
)
#: Appeal routes of a category's own legislation, stated before the general ones.
CATEGORY_APPEALS: dict[str, str] = {
    "urbanisme": (
        "En matière de permis, le demandeur peut introduire un recours motivé auprès du "
        "Gouvernement wallon, par envoi adressé au directeur général du SPW Territoire, "
        "Logement, Patrimoine, Énergie, dans les trente jours de la réception de la présente "
        "décision (Code du Développement Territorial, article D.IV.63)."
    ),
}


@dataclass(frozen=True)
class DecisionLetter:
    commune: str
    recipient_kind: Literal["person", "enterprise"]
    recipient_identifier: str
    recipient_name: str | None
    meeting_kind: MeetingKind
    meeting_date: date
    decision_number: str
    title: str
    decision: Decision
    decision_text: str
    category: str | None
    file_reference: str | None
    written_at: datetime

    @classmethod
    def of(cls, decided: ItemDecided, commune: str, written_at: datetime) -> DecisionLetter:
        if decided.concerned_party is None or decided.decision_number is None:
            raise ValueError(f"item {decided.item_id}'s decision notifies no one")
        party = decided.concerned_party
        return cls(
            commune=commune,
            recipient_kind=party.kind,
            recipient_identifier=party.identifier,
            recipient_name=party.name,
            meeting_kind=decided.meeting_kind,
            meeting_date=commune_day(decided.meeting_date),
            decision_number=decided.decision_number,
            title=decided.title,
            decision=decided.decision,
            decision_text=decided.decision_text,
            category=decided.category,
            file_reference=decided.external_identifier,
            written_at=written_at,
        )

    @property
    def body(self) -> str:
        return BODIES[self.meeting_kind]

    @property
    def subject(self) -> str:
        """The mail's subject, as the e-Box shows it in the recipient's list."""
        return (
            f"Décision du {self.body} du {french_date(self.meeting_date)} — {self.decision_number}"
        )


def french_date(day: date) -> str:
    """``1er mars 2026``, ``12 mars 2026``."""
    number = "1er" if day.day == 1 else str(day.day)
    return f"{number} {MONTHS[day.month - 1]} {day.year}"


def format_enterprise_number(digits: str) -> str:
    """``0403170701`` → ``0403.170.701``, as the Crossroads Bank for Enterprises writes it."""
    return f"{digits[:4]}.{digits[4:7]}.{digits[7:]}" if len(digits) == 10 else digits


def printable(text: str) -> str:
    """``text`` in the core fonts' Windows-1252: other characters lose their accent, or become ?."""
    kept = []
    for char in text.replace("\t", "    ").replace("\r\n", "\n").translate(UNDECOMPOSABLE):
        try:
            char.encode(ENCODING)
            kept.append(char)
        except UnicodeEncodeError:
            base = unicodedata.normalize("NFKD", char).encode(ENCODING, "ignore").decode(ENCODING)
            kept.append(base or "?")
    return "".join(kept)


TEMPLATE_NOTE = (
    "Lettre établie automatiquement d'après le modèle générique de notification du hub, à "
    "partir de la délibération ; seul le registre des délibérations fait foi."
)


class _Letter(FPDF):
    def __init__(self, footer_text: str) -> None:
        super().__init__(format="A4", unit="mm")
        self.core_fonts_encoding = ENCODING
        self._footer_text = footer_text

    def footer(self) -> None:
        self.set_y(-17)
        self.set_font("helvetica", size=7.5)
        self.set_text_color(110)
        self.cell(0, 4, printable(TEMPLATE_NOTE), align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.cell(0, 4, f"{self._footer_text} — page {self.page_no()}/{{nb}}", align="C")


def render(letter: DecisionLetter) -> bytes:
    """The letter as a PDF (A4, one or more pages)."""
    pdf = _Letter(printable(f"{letter.commune} — {letter.decision_number}"))
    pdf.set_margins(20, 18, 20)
    pdf.set_auto_page_break(True, margin=24)
    pdf.set_title(printable(letter.subject))
    pdf.set_author(printable(letter.commune))
    pdf.set_subject(printable(letter.title))
    pdf.set_creator("Wallonia interop hub (services/courrier)")
    pdf.set_lang("fr-BE")
    pdf.set_creation_date(letter.written_at)
    pdf.add_page()
    _letterhead(pdf, letter)
    _addressee(pdf, letter)
    _references(pdf, letter)
    _decision(pdf, letter)
    _appeal(pdf, letter)
    _closing(pdf, letter)
    return bytes(pdf.output())


def _line(
    pdf: FPDF,
    text: str,
    *,
    height: float = 5.5,
    style: str = "",
    size: float = 10.5,
    align: Align = Align.L,
) -> None:
    pdf.set_font("helvetica", style=style, size=size)
    pdf.multi_cell(0, height, printable(text), align=align, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _on(day: date) -> str:
    """A date the letter's lines never cut in two."""
    return french_date(day).replace(" ", NO_BREAK)


def _letterhead(pdf: FPDF, letter: DecisionLetter) -> None:
    _line(pdf, letter.commune, style="B", size=15, height=7)
    _line(pdf, f"Administration communale — {letter.body}", size=10)
    pdf.set_draw_color(150)
    pdf.line(20, pdf.get_y() + 2, 190, pdf.get_y() + 2)
    pdf.ln(8)


def _addressee(pdf: FPDF, letter: DecisionLetter) -> None:
    lines = [letter.recipient_name or "À la personne concernée par la décision"]
    if letter.recipient_kind == "enterprise":
        lines.append(f"N° d'entreprise {format_enterprise_number(letter.recipient_identifier)}")
    lines.append("Par e-Box")
    pdf.set_font("helvetica", size=10.5)
    for text in lines:
        pdf.set_x(115)
        pdf.multi_cell(75, 5.5, printable(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(6)
    pdf.set_x(115)
    pdf.cell(75, 5.5, printable(f"Le {french_date(commune_day(letter.written_at))}"))
    pdf.ln(10)


def _references(pdf: FPDF, letter: DecisionLetter) -> None:
    _line(pdf, f"Notre référence : {letter.decision_number}")
    if letter.file_reference:
        _line(pdf, f"Dossier : {letter.file_reference}")
    pdf.ln(3)
    _line(
        pdf,
        f"Objet : notification de la décision du {letter.body} du "
        f"{_on(letter.meeting_date)} — {letter.title}",
        style="B",
    )
    pdf.ln(5)


def _decision(pdf: FPDF, letter: DecisionLetter) -> None:
    _line(pdf, "Madame, Monsieur,")
    pdf.ln(3)
    _line(
        pdf,
        f"Nous avons l'honneur de vous notifier la décision prise par le {letter.body} en sa "
        f"séance du {_on(letter.meeting_date)}, sous le numéro "
        f"{letter.decision_number}, au sujet de : {letter.title}.",
        align=Align.J,
    )
    pdf.ln(3)
    _line(pdf, f"Décision : {OUTCOMES[letter.decision]}", style="B")
    pdf.ln(3)
    _line(pdf, "Texte de la décision :", style="B")
    text = letter.decision_text.strip() or "(Le texte de la décision n'a pas été transmis.)"
    pdf.set_left_margin(28)
    _line(pdf, text, size=10)
    pdf.set_left_margin(20)
    pdf.ln(5)


def _appeal(pdf: FPDF, letter: DecisionLetter) -> None:
    _line(pdf, "Voies de recours", style="B")
    pdf.ln(1)
    specific = CATEGORY_APPEALS.get(letter.category or "")
    if specific:
        _line(pdf, specific, size=9.5, height=5, align=Align.J)
        pdf.ln(2)
    _line(pdf, APPEAL, size=9.5, height=5, align=Align.J)
    pdf.ln(5)


def _closing(pdf: FPDF, letter: DecisionLetter) -> None:
    _line(
        pdf,
        "Pour toute question, adressez-vous à l'administration communale en rappelant la "
        f"référence {letter.decision_number}.",
    )
    pdf.ln(3)
    _line(pdf, "Veuillez agréer, Madame, Monsieur, l'expression de nos salutations distinguées.")
    pdf.ln(8)
    left, right = SIGNATORIES
    _line(pdf, ON_BEHALF[letter.meeting_kind])
    pdf.set_font("helvetica", size=10.5)
    pdf.cell(85, 5.5, printable(left))
    pdf.cell(85, 5.5, printable(right), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
