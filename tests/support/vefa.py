"""Score the rule sets against the official VEFA unit-test suites of the corpus.

A VEFA ``<testSet>`` holds ``<test>`` elements, each with an ``<assert>``
naming the rule ids expected to fire (``<error>``, ``<warning>``) or to stay
quiet (``<success>``), and one Invoice or CreditNote (often a fragment). A test
that expects rules to fire agrees when every one of them fires; one that
expects rules to stay quiet agrees when none of them fires.

``python -m tests.support.vefa [cen|peppol]`` prints the disagreements, rule by
rule, for whoever is writing rules.
"""

from __future__ import annotations

import copy
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from services.factures.rules import validate

VEFA = "{http://difi.no/xsd/vefa/validator/1.0}"
DOCUMENT_TAGS = {
    "{urn:oasis:names:specification:ubl:schema:xsd:Invoice-2}Invoice",
    "{urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2}CreditNote",
}
CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "einvoice"
SUITES = {"cen": CORPUS / "cen-unit-ubl-invoice", "peppol": CORPUS / "peppol-unit-ubl"}
EXAMPLES = {"cen": CORPUS / "cen-examples", "peppol": CORPUS / "peppol-examples"}


@dataclass
class VefaTest:
    source: str  # "<file>#<n>"
    description: str
    expect_fire: set[str]
    expect_quiet: set[str]
    document: etree._Element


@dataclass
class Score:
    fire_expected: int = 0
    fire_agreed: int = 0
    quiet_expected: int = 0
    quiet_agreed: int = 0
    disagreements: list[str] = field(default_factory=list)
    missed_by_rule: Counter[str] = field(default_factory=Counter)
    spurious_by_rule: Counter[str] = field(default_factory=Counter)

    @property
    def fire_rate(self) -> float:
        return self.fire_agreed / self.fire_expected if self.fire_expected else 1.0

    @property
    def quiet_rate(self) -> float:
        return self.quiet_agreed / self.quiet_expected if self.quiet_expected else 1.0


def read_tests(folder: Path) -> Iterator[VefaTest]:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)
    for path in sorted(folder.glob("*.xml")):
        test_set = etree.parse(str(path), parser).getroot()
        for number, test in enumerate(test_set.iter(f"{VEFA}test"), start=1):
            documents = [child for child in test if child.tag in DOCUMENT_TAGS]
            if len(documents) != 1:
                continue
            expectations = test.find(f"{VEFA}assert")
            fire: set[str] = set()
            quiet: set[str] = set()
            description = ""
            if expectations is not None:
                description = (expectations.findtext(f"{VEFA}description") or "").strip()
                for child in expectations:
                    ids = (child.text or "").split()
                    if child.tag in (f"{VEFA}error", f"{VEFA}warning"):
                        fire.update(ids)
                    elif child.tag == f"{VEFA}success":
                        quiet.update(ids)
            yield VefaTest(
                f"{path.name}#{number}", description, fire, quiet, copy.deepcopy(documents[0])
            )


def score(folder: Path) -> Score:
    result = Score()
    for test in read_tests(folder):
        fired = {finding.rule for finding in validate(test.document)}
        if test.expect_fire:
            result.fire_expected += 1
            missed = test.expect_fire - fired
            if missed:
                result.missed_by_rule.update(missed)
                result.disagreements.append(f"{test.source} did not fire {sorted(missed)}")
            else:
                result.fire_agreed += 1
        if test.expect_quiet:
            result.quiet_expected += 1
            spurious = test.expect_quiet & fired
            if spurious:
                result.spurious_by_rule.update(spurious)
                result.disagreements.append(f"{test.source} fired {sorted(spurious)}")
            else:
                result.quiet_agreed += 1
    return result


def main(argv: list[str]) -> int:
    for name in argv or list(SUITES):
        result = score(SUITES[name])
        print(
            f"{name}: fire {result.fire_agreed}/{result.fire_expected} "
            f"({result.fire_rate:.1%}), quiet {result.quiet_agreed}/{result.quiet_expected} "
            f"({result.quiet_rate:.1%})"
        )
        for line in result.disagreements:
            print("   ", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
