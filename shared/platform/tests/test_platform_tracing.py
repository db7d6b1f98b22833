"""Tracing: off unless OTLP is configured; when it is, spans reach the collector over OTLP/HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from crm_platform import tracing
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@pytest.fixture(autouse=True)
def _tracing_off_after() -> Iterator[None]:
    yield
    tracing.use_provider(None)


def test_tracing_is_off_without_an_otlp_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.configure("leads") is False
    assert not tracing.enabled()
    assert tracing.capture() is None
    assert tracing.current_carrier() is None
    # Off, a consumer's span is a no-op and nothing is injected anywhere.
    with tracing.consuming([("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")], topic="t"):
        assert tracing.current_carrier() is None


def test_sdk_disabled_wins_over_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure("leads") is False


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, *args: object) -> None:
        pass


def test_spans_are_exported_over_otlp_http_when_an_endpoint_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "sales-eu")
        assert tracing.configure("sales") is True
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        with tracing.consuming([("traceparent", parent.encode())], topic="crm.leads.lead-qualified"):
            carrier = tracing.current_carrier()
        tracing.flush()
    finally:
        server.shutdown()
        server.server_close()
    assert carrier is not None
    assert carrier["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    (path, content_type, body) = _Collector.received[-1]
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attributes["service.name"] == "sales-eu"  # OTEL_SERVICE_NAME over the default
    (span,) = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span.name == "crm.leads.lead-qualified process"
    assert span.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent_span_id.hex() == "00f067aa0ba902b7"
