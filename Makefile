# The two set-up commands of the README. Both install what they need first.
#   make up    the whole stack on its embedded defaults (tempered up)
#   make test  the test suite
VENV ?= .venv
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: up test install

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

up: $(STAMP)
	$(VENV)/bin/tempered up

test: $(STAMP)
	$(VENV)/bin/pytest -q
