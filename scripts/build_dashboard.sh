#!/usr/bin/env bash
# Rebuild the dashboard into services/api/dashboard/dist/ (committed, so running
# Fast Brain needs no Node.js). Exact versions come from package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/../services/api/dashboard"
npm ci --no-audit --no-fund
npm run build
