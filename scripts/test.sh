#!/usr/bin/env bash
# Install tokenpace with its test dependencies, prepare the kernel side of live mode (root only:
# BCC, kernel headers, tracefs; see scripts/setup_live.sh), and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = "0" ]; then
    bash scripts/setup_live.sh
else
    echo "not root: skipping live set-up (live tests will skip unless TOKENPACE_REQUIRE_LIVE=1)"
fi
python3 -m pip install --quiet --disable-pip-version-check -e '.[test,live,ml]'
python3 -m pytest -q "$@"
