"""Personal data taken out of decision texts before they are published (rules: docs/publication.md).

Pure functions over text, applied in this order so that an earlier rule's
token is never read again by a later one:

1. e-mail addresses → ``[adresse électronique]``;
2. Belgian IBANs (modulo-97 checked) → ``[compte bancaire]``;
3. national numbers (NISS, with or without separators, modulo-97 checked: any
   other 11-digit number stays) → ``[numéro national]``;
4. Belgian phone numbers → ``[téléphone]``;
5. street addresses with a house number (the postcode and locality with them)
   → ``[adresse N]``; a street named without a number stays (public works
   name streets, and a street alone identifies nobody);
6. private persons → ``[personne N]``: the name of the person the decision
   concerns (when a person, not a company), and a salutation's name
   ("Monsieur Jean Dupont", "Mme DUPONT"); later bare mentions of their
   surname too. The commune's officials (the meeting's attendees) are kept:
   they act in their public office.

One ``Pseudonymiser`` numbers what it replaces in order of appearance and
keeps the numbers across the texts it is given, so the title, the decision
and the annexes of one decision name "[personne 1]" alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from contracts.identifiers import check_enterprise_number, check_niss

NISS_TOKEN = "[numéro national]"
EMAIL_TOKEN = "[adresse électronique]"
PHONE_TOKEN = "[téléphone]"
IBAN_TOKEN = "[compte bancaire]"

_UPPER = "A-ZÀ-ÖØ-Þ"
_CAPITALISED = rf"[{_UPPER}][\w'’]*(?:-[\w'’]+)*"

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_IBAN = re.compile(r"(?<![\w])BE\s?\d{2}(?:[\s.-]?\d{4}){3}(?!\d)", re.IGNORECASE)
_NISS = re.compile(
    r"(?<![\d.,/-])\d{2}[.\s-]?\d{2}[.\s-]?\d{2}[.\s-]?\d{3}[.\s-]?\d{2}(?![\d]|[.,/-]\d)"
)
_PHONE = re.compile(
    r"(?<![\w/+.,-])(?:(?P<international>(?:\+|00)\s?32\s?(?:\(0\)\s?)?)|0)"
    r"(?:\d{8,9}|\d{1,3}(?:[\s./-]\d{2,3}){2,4})(?![\w]|[.,/-]\d)"
)
_ENTERPRISE_FORMAT = re.compile(r"0\d{3}\.\d{3}\.\d{3}")
_ENTERPRISE_LABEL = re.compile(r"(?:BCE|KBO|TVA|BTW|entreprise|BE)\W*$", re.IGNORECASE)

_STREET_TYPES = (
    r"rue|ruelle|avenue|av\.|chaussée|chée|place|boulevard|bd|chemin|route|allée|impasse|"
    r"quai|square|clos|drève|sentier|venelle|rond-point|parvis|esplanade|faubourg|cité|"
    r"hameau|thier|tienne|passage|résidence"
)
_CONNECTOR = (
    r"(?:de\s+la\s+|de\s+l['’]|du\s+|des\s+|de\s+|d['’]|la\s+|le\s+|les\s+|l['’]|aux\s+|au\s+)"
)
#: A word of a street's name: capitalised ("Haute", "Saint-Jean") or a date's day ("du 8 Mai").
_STREET_WORD = rf"(?:{_CAPITALISED}|\d{{1,2}}(?:er)?(?=\s+[{_UPPER}]))"
_HOUSE_NUMBER = (
    r",?\s+(?:n°\s*)?\d{1,4}(?:\s?[a-zA-Z](?!\w))?(?:\s?(?:bis|ter)(?!\w))?"
    r"(?:\s*(?:/|bte\.?|boîte|bus)\s*\d{1,4}[a-zA-Z]?(?!\w))?"
)
_LOCALITY = rf",?\s+(?:B-)?[1-9]\d{{3}}\s+(?:(?:La|Le|Les)\s+)?{_CAPITALISED}"
_ADDRESS = re.compile(
    rf"(?<![\w-])(?:(?P<lead>\d{{1,4}}[a-zA-Z]?),?\s+)?(?i:{_STREET_TYPES})\s+"
    rf"{_CONNECTOR}?{_STREET_WORD}(?:\s+{_CONNECTOR}?{_STREET_WORD}){{0,4}}"
    rf"(?P<number>{_HOUSE_NUMBER})?(?P<locality>{_LOCALITY})?"
)

_SALUTATION = (
    r"Monsieur|Madame|Mademoiselle|Messieurs|Mesdames|Docteur|Maître|"
    r"MM\.|M\.|Mmes|Mme|Mlle|Mrs\.?|Mr\.?|Ms\.?|Dr\.?|Me"
)
_PARTICLE = r"(?:de|du|des|d['’]|van|von|der|den|le|la|di|da|dos|el)"
_INITIAL = rf"[{_UPPER}]\."
#: Capitalised words that begin a clause or name an office, never a person's name.
# fmt: off
_NOT_NAMES = frozenset({
    "le", "la", "les", "l", "un", "une", "des", "du", "de", "il", "elle", "ils", "elles",
    "ce", "cet", "cette", "ces", "vu", "considérant", "attendu", "décide", "article", "art",
    "et", "ou", "que", "qui", "en", "au", "aux", "par", "pour", "sur", "dans", "avec",
    "collège", "conseil", "bourgmestre", "échevin", "échevine", "président", "présidente",
    "directeur", "directrice", "secrétaire", "conseiller", "conseillère", "commune", "ville",
    "région", "wallonie", "wallonne", "cpas",
})
# fmt: on
_NAME_WORD = rf"(?:{_INITIAL}|{_CAPITALISED})"
#: Between two words of a name: "de ", "van der ", or "d'" stuck to the next word.
_NAME_LINK = rf"\s+(?:{_PARTICLE}\s+|{_PARTICLE}(?=[{_UPPER}]))?"
_SALUTED_NAME = re.compile(
    rf"(?<![\w])(?P<salutation>{_SALUTATION})\s+"
    rf"(?P<name>(?:{_PARTICLE}\s+)?{_NAME_WORD}(?:{_NAME_LINK}{_NAME_WORD}){{0,3}})"
)


def is_valid_iban(text: str) -> bool:
    compact = re.sub(r"[\s.-]", "", text).upper()
    rearranged = compact[4:] + compact[:4]
    digits = "".join(str(int(char, 36)) for char in rearranged)
    return int(digits) % 97 == 1


def is_niss(text: str) -> bool:
    try:
        check_niss(text)
    except ValueError:
        return False
    return True


def _is_enterprise_number(match: re.Match[str]) -> bool:
    """A company's BCE/KBO number (public), which Belgian phone numbers can look like."""
    try:
        check_enterprise_number(match.group(0))
    except ValueError:
        return False
    before = match.string[max(0, match.start() - 20) : match.start()]
    return bool(_ENTERPRISE_FORMAT.fullmatch(match.group(0)) or _ENTERPRISE_LABEL.search(before))


def _is_phone(match: re.Match[str]) -> bool:
    if _is_enterprise_number(match):
        return False
    digits = re.sub(r"\D", "", match.group(0))
    if match.group("international"):
        national = digits.removeprefix("00").removeprefix("32").removeprefix("0")
        return len(national) in (8, 9)
    return len(digits) in (9, 10)


#: Punctuation around a word of a name, never part of it ("Lambert," of "Lambert, Sophie");
#: an initial's full stop, a hyphen and an apostrophe are.
_AROUND_NAME_WORDS = ',;:()[]"«»'


def _name_parts(name: str) -> list[str]:
    return [word for part in name.split() if (word := part.strip(_AROUND_NAME_WORDS))]


def _is_particle(word: str) -> bool:
    return bool(re.fullmatch(_PARTICLE, word, re.IGNORECASE))


def _family_word(words: list[str]) -> str | None:
    """The word of a family name its bare mentions use: the one in capitals, else the last."""
    names = [word for word in words if not re.fullmatch(_INITIAL, word) and not _is_particle(word)]
    if not names:
        return None
    capitals = [word for word in names if len(word) > 1 and word.isupper()]
    return capitals[0] if capitals else names[-1]


def _units(words: list[str]) -> list[str]:
    """A name's words with each particle joined to the word it belongs to ("de Vos")."""
    units: list[str] = []
    pending: list[str] = []
    for word in words:
        pending.append(word)
        if not _is_particle(word):
            units.append(" ".join(pending))
            pending = []
    if pending:
        units.append(" ".join(pending))
    return units


def readings(name: str) -> list[tuple[str, list[str]]]:
    """The ways ``name`` reads as (family name, given names), the likeliest first.

    "Lambert, Sophie" is family name first, as the hub's urban service writes an
    applicant (``split_declared_name``); "DUPONT Jean Marie" has its family name
    in capitals; "Jean de Vos" and "Jean Dupont" have it last. "Dupont Jean Marie"
    may have it first or last: both readings are kept, so that neither
    "Jean Dupont" nor a bare "Dupont" stays in a published text.
    """
    if "," in name:
        family, _, given = name.partition(",")
        return [(" ".join(_name_parts(family)), _name_parts(given))]
    units = _units(_name_parts(name))
    if len(units) < 2:
        return [(" ".join(units), [])] if units else []
    capitals = [
        unit
        for unit in units
        if (word := _family_word(unit.split())) and len(word) > 1 and word.isupper()
    ]
    if capitals and len(capitals) < len(units):
        return [(" ".join(capitals), [unit for unit in units if unit not in capitals])]
    family_last = (units[-1], units[:-1])
    if len(units) == 2:
        return [family_last]
    return [family_last, (units[0], units[1:])]


def surname_of(name: str) -> str | None:
    """The part of a name that is the family name: before a comma, the one in capitals, else
    the last word."""
    found = readings(name)
    return _family_word(found[0][0].split()) if found else None


def _key(name: str) -> str:
    return " ".join(_name_parts(name)).casefold()


def _trim_name(name: str) -> str:
    """The name without trailing words that cannot be one (``Dupont Le`` of "Dupont Le collège");
    empty when it is an office ("le Bourgmestre") or a clause rather than a name."""
    parts = _name_parts(name)
    while parts and (parts[-1].casefold() in _NOT_NAMES or re.fullmatch(_PARTICLE, parts[-1])):
        parts.pop()
    names = [part for part in parts if not re.fullmatch(_PARTICLE, part)]
    if not names or names[0].casefold() in _NOT_NAMES:
        return ""
    return " ".join(parts)


def _loose(name: str) -> str:
    """A pattern for ``name`` as it may be written: any spacing, any case."""
    return r"\s+".join(re.escape(part) for part in name.split())


def _written_forms(name: str) -> set[str]:
    """How a text may write a person's full name: as given, and from each of its readings
    the given names and the family name in either order (the family name first with or
    without a comma), all or the first given name only ("Lambert, Sophie Anne" is
    written "Sophie Lambert" too)."""
    forms = {" ".join(name.split())}
    for family, given in readings(name):
        if not given:
            forms.add(family)
            continue
        for names in {" ".join(given), given[0]}:
            forms.update({f"{names} {family}", f"{family} {names}", f"{family}, {names}"})
    return {form for form in forms if form}


class Pseudonymiser:
    """Replaces personal data in the texts of one decision, numbering persons and addresses."""

    def __init__(
        self, *, private_persons: Iterable[str] = (), officials: Iterable[str] = ()
    ) -> None:
        self._persons: dict[str, int] = {}
        self._addresses: dict[str, int] = {}
        #: Family names of the persons replaced, whose bare mentions are replaced too.
        self._surnames: set[str] = set()
        self._officials = {_key(name) for name in officials if name.strip()}
        self._official_surnames = {
            surname.casefold() for name in officials if (surname := surname_of(name))
        }
        self._private = [name for name in private_persons if name and name.strip()]
        #: A family name of another reading of a private person's name → the person's own
        #: (``readings``): a bare "Dupont" of "Dupont Jean Marie" is that person's token.
        self._same_person: dict[str, str] = {}
        for name in self._private:
            own = surname_of(name)
            for family, _ in readings(name):
                surname = _family_word(family.split())
                if surname is not None and len(surname) > 1:
                    self._surnames.add(surname)
                    if own is not None:
                        self._same_person.setdefault(surname.casefold(), own.casefold())

    def __call__(self, text: str) -> str:
        text = _EMAIL.sub(EMAIL_TOKEN, text)
        text = _IBAN.sub(lambda m: IBAN_TOKEN if is_valid_iban(m.group(0)) else m.group(0), text)
        text = _NISS.sub(lambda m: NISS_TOKEN if is_niss(m.group(0)) else m.group(0), text)
        text = _PHONE.sub(lambda m: PHONE_TOKEN if _is_phone(m) else m.group(0), text)
        text = _ADDRESS.sub(self._address, text)
        text = self._replace_private_persons(text)
        text = _SALUTED_NAME.sub(self._saluted_person, text)
        return self._replace_surnames(text)

    # -- addresses ----------------------------------------------------------------------

    def _address(self, match: re.Match[str]) -> str:
        if not (match.group("lead") or match.group("number")):
            return match.group(0)  # a street without a house number names no one's home
        key = re.sub(r"[\s,]+", " ", match.group(0)).casefold()
        number = self._addresses.setdefault(key, len(self._addresses) + 1)
        return f"[adresse {number}]"

    # -- persons ----------------------------------------------------------------------

    def _person_token(self, name: str) -> str:
        # Persons are told apart by family name: "Monsieur Jean Dupont" and a later
        # "M. Dupont" are one person; two Duponts share a token (nothing leaks).
        key = (surname_of(name) or name).casefold()
        key = self._same_person.get(key, key)
        number = self._persons.setdefault(key, len(self._persons) + 1)
        return f"[personne {number}]"

    def _is_official(self, name: str) -> bool:
        if _key(name) in self._officials:
            return True
        # "Monsieur Martin" for the official Jean Martin; not "Madame Anne Martin".
        surname = surname_of(name)
        return (
            surname is not None
            and _key(name) == surname.casefold()
            and surname.casefold() in self._official_surnames
        )

    def _replace_private_persons(self, text: str) -> str:
        for name in self._private:
            variants = sorted(_written_forms(name), key=len, reverse=True)  # longest first
            pattern = "|".join(_loose(variant) for variant in variants)
            compiled = re.compile(rf"(?<![\w-])(?:{pattern})(?![\w-])", re.IGNORECASE)
            text = compiled.sub(self._token_of(name), text)
        return text

    def _token_of(self, name: str) -> Callable[[re.Match[str]], str]:
        return lambda _match: self._person_token(name)

    def _saluted_person(self, match: re.Match[str]) -> str:
        name = _trim_name(match.group("name"))
        if not name or self._is_official(name):
            return match.group(0)
        surname = surname_of(name)
        # A bare surname an official shares is ambiguous: only the full mentions are replaced.
        if surname is not None and surname.casefold() not in self._official_surnames:
            self._surnames.add(surname)
        rest = match.group("name")[len(name) :]
        return f"{match.group('salutation')} {self._person_token(name)}{rest}"

    def _replace_surnames(self, text: str) -> str:
        """Bare later mentions ("Dupont a introduit…") of the persons already replaced."""
        if not self._surnames:
            return text
        words = "|".join(re.escape(s) for s in sorted(self._surnames, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w\[-])(?:{words})(?![\w-])", re.IGNORECASE)

        def replace(match: re.Match[str]) -> str:
            word = match.group(0)
            if not word[0].isupper():  # "dupont" in lower case is a word, not the name
                return word
            return self._person_token(word)

        return pattern.sub(replace, text)


def pseudonymise(
    text: str, *, private_persons: Iterable[str] = (), officials: Iterable[str] = ()
) -> str:
    """One text on its own (``Pseudonymiser`` keeps the numbering across several)."""
    return Pseudonymiser(private_persons=private_persons, officials=officials)(text)
