"""Prometheus metrics of the API: `GET /metrics` (docs/metrics.md)."""
