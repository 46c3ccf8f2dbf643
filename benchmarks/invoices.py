"""``make bench`` (e): invoice validation throughput, the Python rules against the official XSLT.

Over the complete examples of the corpus (``cen-examples`` and ``peppol-examples``),
after warm-up rounds, for several rounds, each variant timed document by document
and the variants interleaved round by round (so a busy neighbour slows them alike):

- ``python_en16931``: the EN 16931 rules (``validate(root, (EN16931,))``);
- ``python_en16931_peppol``: EN 16931 + Peppol BIS 3.0 (``validate(root)``);
- ``xslt_cen``: the official CEN compiled Schematron (``BENCH_EN16931_XSLT``)
  through Saxon-HE, as the hub runs it (``schemas.run_compiled_schematron``:
  the tree serialized, parsed by Saxon, transformed, the SVRL report read);
- ``xslt_cen_peppol``: the CEN and the Peppol (``BENCH_PEPPOL_XSLT``) XSLTs;
- ``*_transform_only``: the same stylesheets on a document Saxon has already
  parsed, the XSLT's own cost (the ratio's stricter denominator).

The Python rules run on the tree ``parse_document`` made (parsing excluded; its
cost is reported apart as ``parse_lxml``). Reported per variant: invoices/s,
mean, p50 and p99 per document (wall clock), and CPU ms per document. The ratio
is XSLT time / Python time (mean per document), target ≥ 5.

Verdicts: per example, valid/invalid and the fatal rule ids, ours against the
official XSLT's restricted to the ids our rule sets implement (``RuleSet.ids()``);
differences are listed. Without ``BENCH_EN16931_XSLT`` only the Python rules run.

``python -m benchmarks.invoices [--rounds N] [--warmup N]`` runs this part alone
(results in var/bench/invoices.json); ``python -m benchmarks.run`` includes it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import save_results
from services.factures.rules import EN16931, PEPPOL, validate
from services.factures.rules.en16931 import our_rule_id
from services.factures.rules.engine import Finding, RuleSet
from services.factures.schemas import run_compiled_schematron
from services.factures.ubl import UblDocument, parse_document

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "einvoice"
EXAMPLE_FOLDERS = ("cen-examples", "peppol-examples")
CEN_VARIABLE = "BENCH_EN16931_XSLT"
PEPPOL_VARIABLE = "BENCH_PEPPOL_XSLT"
TARGET_RATIO = 5.0


@dataclass
class Example:
    name: str  # "<folder>/<file>"
    data: bytes
    document: UblDocument


def load_examples(corpus: Path = CORPUS) -> list[Example]:
    examples = []
    for folder in EXAMPLE_FOLDERS:
        for path in sorted((corpus / folder).iterdir()):
            if path.suffix.lower() == ".xml":
                data = path.read_bytes()
                examples.append(Example(f"{folder}/{path.name}", data, parse_document(data)))
    if not examples:
        raise SystemExit(f"no examples under {corpus}")
    return examples


def _percentile(ordered: Sequence[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Timing:
    wall: list[float]  # seconds, one per document per round
    cpu: float = 0.0  # seconds of process CPU time, all rounds

    def summary(self, documents: int) -> dict[str, float]:
        ordered = sorted(self.wall)
        total = sum(ordered)
        return {
            "invoices_per_second": round(len(ordered) / total, 1),
            "mean_ms": round(total / len(ordered) * 1000, 3),
            "p50_ms": round(_percentile(ordered, 0.50) * 1000, 3),
            "p99_ms": round(_percentile(ordered, 0.99) * 1000, 3),
            "cpu_ms_per_invoice": round(self.cpu / len(ordered) * 1000, 3),
            "samples": len(ordered),
            "documents": documents,
        }


Variant = Callable[[Example], object]


def _variants(cen: Path | None, peppol: Path | None) -> dict[str, Variant]:
    variants: dict[str, Variant] = {
        "parse_lxml": lambda example: parse_document(example.data),
        "python_en16931": lambda example: validate(example.document.root, (EN16931,)),
        "python_en16931_peppol": lambda example: validate(example.document.root),
    }
    if cen is not None:
        variants["xslt_cen"] = lambda example: run_compiled_schematron(cen, example.document)
        transform_cen = _transform_only(cen)
        variants["xslt_cen_transform_only"] = lambda example: transform_cen(example)
        if peppol is not None:
            transform_peppol = _transform_only(peppol)
            variants["xslt_cen_peppol"] = lambda example: (
                run_compiled_schematron(cen, example.document)
                + run_compiled_schematron(peppol, example.document)
            )
            variants["xslt_cen_peppol_transform_only"] = lambda example: (
                transform_cen(example),
                transform_peppol(example),
            )
    return variants


def _transform_only(path: Path) -> Variant:
    """The stylesheet on documents Saxon parsed beforehand: the XSLT's own cost."""
    from lxml import etree
    from saxonche import PySaxonProcessor

    processor = PySaxonProcessor(license=False)
    stylesheet = processor.new_xslt30_processor().compile_stylesheet(stylesheet_file=str(path))
    parsed: dict[str, Any] = {}

    def transform(example: Example) -> object:
        node = parsed.get(example.name)
        if node is None:
            source = etree.tostring(example.document.root, encoding="unicode")
            node = parsed[example.name] = processor.parse_xml(xml_text=source)
        return stylesheet.transform_to_string(xdm_node=node)

    return transform


def measure(
    examples: list[Example], variants: dict[str, Variant], rounds: int, warmup: int
) -> dict[str, Timing]:
    timings = {name: Timing([]) for name in variants}
    for round_number in range(warmup + rounds):
        for name, variant in variants.items():
            samples: list[float] = []
            cpu_start = time.process_time()
            for example in examples:
                start = time.perf_counter()
                variant(example)
                samples.append(time.perf_counter() - start)
            if round_number >= warmup:
                timings[name].cpu += time.process_time() - cpu_start
                timings[name].wall.extend(samples)
    return timings


def _fatal_ids(findings: list[Finding], implemented: set[str]) -> set[str]:
    ids = {our_rule_id(f.rule) for f in findings if f.flag == "fatal"}
    return ids & implemented


def compare_verdicts(
    examples: list[Example], rule_sets: tuple[RuleSet, ...], stylesheets: list[Path]
) -> dict[str, Any]:
    """Ours against the official XSLT(s): valid/invalid and fatal ids we implement."""
    implemented = set().union(*(rule_set.ids() for rule_set in rule_sets))
    differences = []
    outside: dict[str, list[str]] = {}
    for example in examples:
        ours = validate(example.document.root, rule_sets)
        official = [
            f for path in stylesheets for f in run_compiled_schematron(path, example.document)
        ]
        ours_fatal = _fatal_ids(ours, implemented)
        official_fatal = _fatal_ids(official, implemented)
        not_ours = sorted(
            {our_rule_id(f.rule) for f in official if f.flag == "fatal"} - implemented
        )
        if not_ours:
            outside[example.name] = not_ours
        ours_valid = not ours_fatal
        official_valid = not official_fatal
        if ours_fatal != official_fatal:
            differences.append(
                {
                    "example": example.name,
                    "ours_valid": ours_valid,
                    "official_valid": official_valid,
                    "only_ours": sorted(ours_fatal - official_fatal),
                    "only_official": sorted(official_fatal - ours_fatal),
                }
            )
    return {
        "examples": len(examples),
        "same_verdict": len(examples)
        - sum(1 for d in differences if d["ours_valid"] != d["official_valid"]),
        "same_fatal_ids": len(examples) - len(differences),
        "differences": differences,
        "official_fatal_ids_not_implemented": outside,
    }


def _stylesheet(variable: str) -> Path | None:
    value = os.environ.get(variable, "")
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise SystemExit(f"{variable}={value}: no such file")
    return path


def run(rounds: int = 10, warmup: int = 3) -> dict[str, Any]:
    """The whole part: timings, ratios, verdicts; printed as it goes, returned as a dict."""
    examples = load_examples()
    cen, peppol = _stylesheet(CEN_VARIABLE), _stylesheet(PEPPOL_VARIABLE)
    timings = measure(examples, _variants(cen, peppol), rounds, warmup)
    summary = {name: timing.summary(len(examples)) for name, timing in timings.items()}
    results: dict[str, Any] = {
        "examples": len(examples),
        "rounds": rounds,
        "warmup_rounds": warmup,
        "stylesheets": {CEN_VARIABLE: str(cen or ""), PEPPOL_VARIABLE: str(peppol or "")},
        "variants": summary,
        "ratios": {},
        "verdicts": {},
    }
    pairs = [
        ("en16931", "python_en16931", "xslt_cen", "xslt_cen_transform_only"),
        (
            "en16931_peppol",
            "python_en16931_peppol",
            "xslt_cen_peppol",
            "xslt_cen_peppol_transform_only",
        ),
    ]
    for label, python, xslt, transform in pairs:
        if xslt in summary:
            ours = summary[python]["mean_ms"]
            results["ratios"][label] = {
                "xslt_over_python": round(summary[xslt]["mean_ms"] / ours, 2),
                "transform_only_over_python": round(summary[transform]["mean_ms"] / ours, 2),
                "cpu_xslt_over_python": round(
                    summary[xslt]["cpu_ms_per_invoice"] / summary[python]["cpu_ms_per_invoice"], 2
                ),
                "target": TARGET_RATIO,
                "met": summary[transform]["mean_ms"] / ours >= TARGET_RATIO,
            }
    if cen is not None:
        results["verdicts"]["en16931"] = compare_verdicts(examples, (EN16931,), [cen])
        if peppol is not None:
            results["verdicts"]["en16931_peppol"] = compare_verdicts(
                examples, (EN16931, PEPPOL), [cen, peppol]
            )
    results["machine"] = {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    print(f"Invoice validation: {results['examples']} examples, {results['rounds']} rounds")
    print(f"{'variant':34} {'inv/s':>9} {'mean ms':>9} {'p50 ms':>9} {'p99 ms':>9} {'cpu ms':>9}")
    for name, row in results["variants"].items():
        print(
            f"{name:34} {row['invoices_per_second']:>9} {row['mean_ms']:>9} "
            f"{row['p50_ms']:>9} {row['p99_ms']:>9} {row['cpu_ms_per_invoice']:>9}"
        )
    for label, ratio in results["ratios"].items():
        print(
            f"ratio {label}: XSLT/Python {ratio['xslt_over_python']}x "
            f"(transform only {ratio['transform_only_over_python']}x, "
            f"CPU {ratio['cpu_xslt_over_python']}x), target {ratio['target']}x: "
            f"{'met' if ratio['met'] else 'NOT met'}"
        )
    for label, verdicts in results["verdicts"].items():
        print(
            f"verdicts {label}: same valid/invalid {verdicts['same_verdict']}/"
            f"{verdicts['examples']}, same fatal ids {verdicts['same_fatal_ids']}/"
            f"{verdicts['examples']}"
        )
        for difference in verdicts["differences"]:
            print(f"    {difference}")
        for name, ids in verdicts["official_fatal_ids_not_implemented"].items():
            print(f"    {name}: official fatal ids we do not implement: {ids}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds over the examples")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    args = parser.parse_args()
    results = run(args.rounds, args.warmup)
    save_results("invoices", results)


if __name__ == "__main__":
    main()
