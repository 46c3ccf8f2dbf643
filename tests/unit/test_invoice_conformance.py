"""The rule sets against the official conformance suites: the issue's targets, measured.

Targets: at least 95% of the VEFA unit tests that expect a rule to fire see it
fire, at least 95% of those that expect it quiet see it quiet (over the CEN and
Peppol suites together), and every complete example valid under the rules it
was written for (CEN examples: EN 16931; Peppol examples: EN 16931 + Peppol).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from services.factures.rules import EN16931, PEPPOL, validate
from services.factures.rules.engine import RuleSet
from tests.conftest import REQUIRE_CORPUS, corpus_or_skip
from tests.support.vefa import EXAMPLES, SUITES, score


@pytest.fixture(autouse=True)
def _conformance_suites() -> None:
    corpus_or_skip(SUITES["cen"], REQUIRE_CORPUS)


TARGET = 0.95


def test_the_unit_suites_agree_with_the_rules_at_least_95_percent() -> None:
    cen, peppol = score(SUITES["cen"]), score(SUITES["peppol"])
    fire_expected = cen.fire_expected + peppol.fire_expected
    quiet_expected = cen.quiet_expected + peppol.quiet_expected
    fire_rate = (cen.fire_agreed + peppol.fire_agreed) / fire_expected
    quiet_rate = (cen.quiet_agreed + peppol.quiet_agreed) / quiet_expected
    report = "\n".join(cen.disagreements + peppol.disagreements)
    assert fire_rate >= TARGET, f"fire rate {fire_rate:.1%}:\n{report}"
    assert quiet_rate >= TARGET, f"quiet rate {quiet_rate:.1%}:\n{report}"


def _examples(suite: str) -> list[Path]:
    return sorted(path for path in EXAMPLES[suite].iterdir() if path.suffix.lower() == ".xml")


@pytest.mark.parametrize(
    ("suite", "rule_sets"), [("cen", (EN16931,)), ("peppol", (EN16931, PEPPOL))]
)
def test_every_complete_example_is_valid(suite: str, rule_sets: tuple[RuleSet, ...]) -> None:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    failures = []
    for path in _examples(suite):
        root = etree.parse(str(path), parser).getroot()
        fatal = [f for f in validate(root, rule_sets) if f.flag == "fatal"]
        if fatal:
            failures.append(f"{path.name}: {[(f.rule, f.location) for f in fatal]}")
    assert not failures, "\n".join(failures)
