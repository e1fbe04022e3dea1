"""The server's Prometheus metrics (`GET /metrics`), kept by Prometheus' own client library (the
`serve` extra) in a registry of the server's own, so two servers in one process never mix:

    charrnn_requests_total{endpoint, status}          requests answered
    charrnn_request_seconds{endpoint}                  a histogram of the time to answer (streamed: to the last byte)
    charrnn_characters_generated_total                 characters drawn for clients
    charrnn_streams_active, charrnn_streams_waiting    streams drawing characters; in flight but not drawing yet
    charrnn_model_step                                 the step of the checkpoint being served
    charrnn_model_loaded_timestamp_seconds             when it was loaded (Unix time)
"""

from __future__ import annotations

from collections.abc import Callable

from charrnn.extras import require

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Telemetry:
    """The metrics of one server; `active` and `waiting` are read when scraped."""

    def __init__(self, active: Callable[[], float], waiting: Callable[[], float]) -> None:
        prometheus = require("prometheus_client", "serve")
        self._prometheus = prometheus
        self.registry = prometheus.CollectorRegistry()
        r = self.registry
        self.requests = prometheus.Counter("charrnn_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.latency = prometheus.Histogram(
            "charrnn_request_seconds", "Time to answer a request", ["endpoint"], buckets=BUCKETS, registry=r
        )
        self.generated = prometheus.Counter("charrnn_characters_generated", "Characters drawn for clients", registry=r)
        prometheus.Gauge("charrnn_streams_active", "Streams drawing characters", registry=r).set_function(active)
        prometheus.Gauge("charrnn_streams_waiting", "Streams in flight not drawing yet", registry=r).set_function(
            waiting
        )
        self.step = prometheus.Gauge("charrnn_model_step", "Step of the checkpoint served", registry=r)
        self.loaded = prometheus.Gauge(
            "charrnn_model_loaded_timestamp_seconds", "When the served checkpoint was loaded", registry=r
        )

    def answered(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def model_loaded(self, step: int, when: float) -> None:
        self.step.set(step)
        self.loaded.set(when)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return self._prometheus.generate_latest(self.registry), self._prometheus.CONTENT_TYPE_LATEST
