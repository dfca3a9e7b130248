#!/usr/bin/env bash
# Install tokenpace with its test dependencies and run the whole suite (unit, fidelity, regression).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test,live,ml]'
python3 -m pytest -q "$@"
