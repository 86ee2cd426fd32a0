#!/usr/bin/env bash
# Set up (first run) and run the test suite. Uses FASTBRAIN_TEST_DATABASE_URL /
# FASTBRAIN_TEST_REDIS_URL, else PostgreSQL and Redis on 127.0.0.1, else
# embedded ones (see tests/conftest.py). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"
# The dashboard's browser tests drive Debian's Chromium (Playwright downloads no browser).
if [ ! -x /usr/bin/chromium ]; then
  echo "Installing Chromium for the dashboard tests..." >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
exec .venv/bin/python -m pytest "$@"
