#!/usr/bin/env bash
# Set up (first run) and run the test suite. Uses FASTBRAIN_TEST_DATABASE_URL /
# FASTBRAIN_TEST_REDIS_URL, else PostgreSQL and Redis on 127.0.0.1, else
# embedded ones (see tests/conftest.py). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"
exec .venv/bin/python -m pytest "$@"
