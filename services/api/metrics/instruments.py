"""The API's metric objects, in prometheus_client's default registry (so process metrics come along).

Labels stay bounded: a method from a fixed list, a route template (never a raw path), a status
code, a base model from the catalog. Job counts and the queue depth are not here: they are read
at scrape time (`services.api.metrics.endpoints`), so no API process holds a stale copy.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

HTTP_LABELS: Final = ("method", "route", "status")

HTTP_REQUESTS: Final = Counter(
    "fastbrain_http_requests", "HTTP requests answered, by method, route template and status code.", HTTP_LABELS
)
HTTP_DURATION: Final = Histogram(
    "fastbrain_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response (a streamed answer counts until its last byte).",
    HTTP_LABELS,
)
WEBSOCKETS_OPEN: Final = Gauge(
    "fastbrain_websockets_open", "Job event streams (WebSockets) this API process is serving now."
)
FIRST_TOKEN: Final = Histogram(
    "fastbrain_inference_first_token_seconds",
    "Time from a chat request reaching its handler to the engine's first token, by base model.",
    ("base_model",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
