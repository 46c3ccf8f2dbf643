"""OpenTelemetry tracing with W3C trace context in HTTP and Kafka headers.

``configure_tracing`` installs one tracer provider per process; it exports by
OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and otherwise keeps
spans in-process (ids still propagate, so the sandbox and logs see one trace
per document). Tests pass their own in-memory exporter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Status
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kernel.logs import mask_national_numbers

_configured = False

#: What the hub carries from a request or an event to what follows it: the W3C trace
#: context (``traceparent``, ``tracestate``) only. OpenTelemetry's global propagator also
#: carries W3C ``baggage``, whatever a caller sends in it (up to 8 KB, unmasked, a
#: national number for instance): it went into every event of the change, on to the
#: consumers' own events and onto the gateway's calls to external targets. Explicit,
#: not the global one, so that ``OTEL_PROPAGATORS`` cannot bring it back.
_PROPAGATOR = TraceContextTextMapPropagator()


class NationalNumbersMasked(SpanExporter):
    """Exports through ``exporter``, national numbers masked in what exceptions put in
    spans: the SDK records an escaping exception's ``str()`` and stack trace as an event,
    and its type and text as the status; a database error quotes its statement's values,
    an applicant's national number among them. The spans' own attributes are the hub's,
    written without personal data."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._exporter.export([_masked(span) for span in spans])

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


def _masked(span: ReadableSpan) -> ReadableSpan:
    if not span.events and not span.status.description:
        return span  # nearly every span: nothing an exception wrote
    description = span.status.description
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=[
            Event(
                event.name,
                {
                    name: mask_national_numbers(value) if isinstance(value, str) else value
                    for name, value in (event.attributes or {}).items()
                },
                event.timestamp,
            )
            for event in span.events
        ],
        links=span.links,
        kind=span.kind,
        status=Status(
            span.status.status_code,
            mask_national_numbers(description) if description else description,
        ),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def configure_tracing(
    service_name: str, otlp_endpoint: str | None = None, exporter: SpanExporter | None = None
) -> None:
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(NationalNumbersMasked(exporter)))
    elif otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(
                NationalNumbersMasked(
                    OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
                )
            )
        )
    trace.set_tracer_provider(provider)
    _configured = True


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``, ``tracestate``)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


@contextmanager
def continue_trace(headers: Mapping[str, str]) -> Iterator[None]:
    """Run the block as a child of the trace context carried by ``headers`` (its
    ``baggage`` left out, see ``_PROPAGATOR``)."""
    token = context.attach(_PROPAGATOR.extract(dict(headers)))
    try:
        yield
    finally:
        context.detach(token)


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a W3C ``traceparent`` header."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None
