# The README's commands; CI calls `make test` unchanged.
.PHONY: demo test lint bench

demo:
	./scripts/bootstrap.sh
	uv run --frozen mirrorq demo

test:
	./scripts/bootstrap.sh
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .
	uv run --frozen mypy
	uv run --frozen lint-imports
	uv run --frozen pytest

lint:
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .
	uv run --frozen mypy
	uv run --frozen lint-imports

bench:
	./scripts/bootstrap.sh
	uv run --frozen python -m bench
