#!/usr/bin/env bash
# Set up (first run) and start Fast Brain: API, worker, embedded PostgreSQL and
# Redis when FASTBRAIN_DATABASE_URL / FASTBRAIN_REDIS_URL are unset, demo skill.
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"
exec .venv/bin/fastbrain dev "$@"
