"""Realistic outgoing mail for the demo and the benchmark: recipients, subjects, PDF letters."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pybase64

SUBJECTS = (
    "Permis d'urbanisme : accusé de réception de votre demande",
    "Taxe sur la collecte des déchets ménagers : avertissement-extrait de rôle",
    "Convocation : commission de concertation",
    "Demande de pièces complémentaires — dossier de permis",
    "Autorisation d'occupation du domaine public",
    "Décision du Collège communal",
    "Carte d'identité électronique : votre document est prêt",
    "Rappel : déclaration de la taxe sur la force motrice",
)


def random_niss(rng: random.Random) -> str:
    """A national number with a valid modulo-97 check, born between 1940 and 2005."""
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 65))
    serial = rng.randrange(1, 998)
    base = f"{born:%y%m%d}{serial:03d}"
    checked = ("2" + base) if born.year >= 2000 else base
    return base + f"{97 - int(checked) % 97:02d}"


def random_enterprise_number(rng: random.Random) -> str:
    """An enterprise number (0 and seven digits) with a valid modulo-97 check."""
    body = rng.randrange(2_000_000, 9_999_999)
    return f"0{body:07d}{97 - body % 97:02d}"


def letter_pdf(subject: str, reference: str) -> bytes:
    """A small, valid one-page PDF carrying the subject and the reference."""
    text = (
        f"{reference} - {subject}".encode("latin-1", "replace")
        .replace(b"(", b"[")
        .replace(b")", b"]")
    )
    stream = b"BT /F1 12 Tf 72 760 Td (" + text + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    pdf = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(pdf))
        pdf += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(pdf)
    pdf += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    pdf += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    pdf += (
        f"trailer << /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(pdf)


def outgoing_mail(rng: random.Random, number: int) -> dict[str, object]:
    """The JSON body of ``POST /v1/outgoing-mails:send`` for one realistic letter."""
    subject = rng.choice(SUBJECTS)
    if rng.random() < 0.8:
        recipient = {"kind": "person", "identifier": random_niss(rng)}
    else:
        recipient = {"kind": "enterprise", "identifier": random_enterprise_number(rng)}
    pdf = letter_pdf(subject, f"demo-{number}")
    return {
        "recipient": recipient,
        "subject": subject,
        "body_pdf_base64": pybase64.b64encode(pdf).decode(),
    }
