#!/usr/bin/env bash
# The project's test command (README "Set-up", and what .ci/run calls).
#
# On a fresh machine it installs everything it needs: a virtual environment in
# .venv with pipfix and its test dependencies, the pinned upstream wheels
# (fetched by pip with --require-hashes), and -- in CI, or when
# PIPFIX_STATIC_MUSL=1 -- the real static-musl CPython the end-to-end suite
# runs on. Then it runs pytest with any extra arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/python vendored_wheels/fetch.py

if [ "${CI:-}" = "true" ] || [ "${PIPFIX_STATIC_MUSL:-}" = "1" ]; then
    echo "building (or reusing) the static-musl CPython for the end-to-end suite" >&2
    PIPFIX_STATIC_MUSL_DIR=$(bash tests/e2e/build-static-musl-python.sh | tail -n 1)
    export PIPFIX_STATIC_MUSL_DIR
fi

exec .venv/bin/python -m pytest "$@"
