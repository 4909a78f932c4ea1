.PHONY: run test lint lock

run:  ## set up and serve the product on http://127.0.0.1:8000 (embedded default)
	bash scripts/run.sh

test:  ## set up and run linters, type checks and the whole test suite
	bash scripts/test.sh

lock:  ## re-pin the whole dependency tree into constraints.txt after editing pyproject.toml
	.venv/bin/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url \
	  --no-emit-find-links --no-header --no-annotate -o constraints.txt pyproject.toml
