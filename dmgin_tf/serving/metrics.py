"""Prometheus metrics of the dev server (prometheus_client), one registry per server.

Served over HTTP at the path of the monitoring config (TF Serving's default
`/monitoring/prometheus/metrics`). Names are ours (`dmgin_serving_*`); TF Serving's
own metrics (`:tensorflow:serving:request_count` …) come from the official image.
"""
from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from typing import Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client as prom

DEFAULT_PATH = "/monitoring/prometheus/metrics"
_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServingMetrics:
    """Counters and histograms the servicer updates; `registry` is private to the server."""

    def __init__(self):
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("dmgin_serving_requests", "RPCs by method, model, signature and status code",
                                     ["method", "model", "signature", "code"], registry=r)
        self.latency = prom.Histogram("dmgin_serving_request_latency_seconds", "Predict latency in the server",
                                      ["model", "signature"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_rows = prom.Histogram("dmgin_serving_batch_rows", "Real rows per executed batch",
                                         ["model", "signature"], buckets=_BATCH_BUCKETS, registry=r)
        self.padded_rows = prom.Counter("dmgin_serving_padding_rows", "Rows added to reach an allowed batch size",
                                        ["model", "signature"], registry=r)
        self.isolated_batches = prom.Counter(
            "dmgin_serving_isolated_batches",
            "Merged batches that failed the model's input checks and were rerun request by "
            "request (one request's bad values must not fail the others)",
            ["model", "signature"], registry=r)
        self.inflight = prom.Gauge("dmgin_serving_inflight_requests", "Predict RPCs being served", registry=r)
        self.version_state = prom.Gauge("dmgin_serving_model_version_state",
                                        "ModelVersionStatus.State per model version (30 = AVAILABLE)",
                                        ["model", "version"], registry=r)

    def text(self) -> bytes:
        return prom.generate_latest(self.registry)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # no access log on stderr
        pass


class MetricsHttpServer:
    """Serves `metrics` at `path` on host:port (port 0 = pick a free one)."""

    def __init__(self, metrics: ServingMetrics, port: int, host: str = "127.0.0.1",
                 path: str = DEFAULT_PATH):
        app = prom.make_wsgi_app(metrics.registry)

        def only_path(environ, start_response):
            if environ.get("PATH_INFO") != path:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [f"metrics are at {path}\n".encode()]
            return app(environ, start_response)

        self._httpd = make_server(host, port, only_path, _ThreadingWSGIServer, _QuietHandler)
        self.port = self._httpd.server_port
        self.path = path
        self._thread: Optional[threading.Thread] = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
