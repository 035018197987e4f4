# eventbus tasks. `just test` and `just demo` set up everything they need.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
python := venv / "bin/python"

# List the tasks.
default:
    @just --list

# Create or update .venv with the package, its extras and the dev tools.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x {{python}} ]; then python3 -m venv {{venv}}; fi
    stamp={{venv}}/.installed
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        {{python}} -m pip install --quiet --upgrade pip
        {{python}} -m pip install --quiet -e '.[all,dev]'
        touch "$stamp"
    fi

# Lint, type-check, then run the whole test suite.
test *args: lint
    {{python}} -m pytest {{args}}

# ruff and mypy --strict.
lint: setup
    {{venv}}/bin/ruff check .
    {{venv}}/bin/ruff format --check .
    {{venv}}/bin/mypy --strict eventbus

# Run the shop example end to end: memory (threads), or rabbitmq, redis, sqs (three processes).
demo backend="memory": setup
    {{python}} -m examples.shop {{backend}}

bench_venv := ".bench-venv"

# eventbus side by side with its peers (pika, Kombu, FastStream, Dramatiq), in their own venv.
bench *args:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x {{bench_venv}}/bin/python ]; then python3 -m venv {{bench_venv}}; fi
    stamp={{bench_venv}}/.installed
    if [ ! -f "$stamp" ] || [ bench/requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        {{bench_venv}}/bin/python -m pip install --quiet --upgrade pip
        {{bench_venv}}/bin/python -m pip install --quiet -r bench/requirements.txt
        touch "$stamp"
    fi
    {{bench_venv}}/bin/python bench/side_by_side.py {{args}}

# The fault suite: worker processes killed and stopped under load, broker faults.
faults *args: setup
    {{python}} -m pytest -m faults tests/faults -p no:cacheprovider {{args}}

# Build the documentation site into site/ (strict: broken links fail).
docs: setup
    {{python}} -m mkdocs build --strict
