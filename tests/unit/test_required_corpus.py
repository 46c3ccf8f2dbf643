"""``HUB_REQUIRE_CORPUS=1`` (set by .ci/run) turns a missing reference corpus into a failure:
the contract tests that read it (AsyncAPI and CloudEvents schemas, e-Box, KSZ-BCSS) would
otherwise skip, and CI pass without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.settings import REPOSITORY_ROOT
from tests.conftest import corpus_or_skip


def test_a_missing_corpus_skips_unless_it_is_required(tmp_path: Path) -> None:
    missing = tmp_path / "shared" / "corpus"
    with pytest.raises(pytest.skip.Exception, match="not beside the checkout"):
        corpus_or_skip(missing, required=False)
    with pytest.raises(pytest.fail.Exception, match="HUB_REQUIRE_CORPUS=1"):
        corpus_or_skip(missing, required=True)
    missing.mkdir(parents=True)
    assert corpus_or_skip(missing, required=True) == missing


def test_ci_requires_the_corpus() -> None:
    ci = (REPOSITORY_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "\nexport HUB_REQUIRE_CORPUS=1\n" in ci
