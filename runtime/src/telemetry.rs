//! Distributed traces: spans exported over OTLP (HTTP/protobuf), off
//! unless an endpoint is configured, and the W3C trace context
//! (`traceparent`, `tracestate`) carried across every hop an invocation
//! takes: HTTP and NATS requests in, forwarding to the owning node, async
//! invocations waiting in JetStream, and messages between entities (in the
//! sending event's metadata).
//!
//! Every invocation runs in a `tracing` span (`invoke`, with the entity
//! type, id, command and invocation id as fields) whenever something reads
//! it ([`invocation_spans`]); with an endpoint set, [`layer`] turns those
//! spans into OpenTelemetry spans (fields become attributes) and a batch
//! thread exports them. The edges call
//! [`set_remote_parent`] on the span they open for a request and
//! [`current_traceparent`] when they send one on; both are no-ops (one
//! relaxed load) while tracing is off.
//!
//! ```
//! let span = tracing::info_span!("http.request");
//! tessera_runtime::telemetry::set_remote_parent(&span, Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), None);
//! assert_eq!(tessera_runtime::telemetry::current_traceparent(), None, "off: nothing is carried");
//! ```

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header that carries the trace and parent span ids.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header that carries vendor trace state.
pub const TRACESTATE: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// True once OTLP export is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The target of the per-invocation spans (`invoke`, `function`, `timer`,
/// `deliver`, `async_call`, `async_command`).
pub const INVOCATION_TARGET: &str = "tessera::invocation";

static LOG_SPANS: AtomicBool = AtomicBool::new(false);

/// Whether an invocation gets its `tracing` span: with traces on (the
/// spans are exported), when the logs are filtered by span fields
/// ([`log_spans`]), or when the log filter shows [`INVOCATION_TARGET`] at
/// debug (`info,tessera::invocation=debug`: each line an invocation logs
/// then carries its span's fields). Otherwise only the log layer would see
/// the span, for the few lines an invocation logs, and it is
/// `Span::none()`: formatting its fields and keeping it in the registry was
/// a fifth of an in-memory command's CPU (BENCHMARKS.md, "What tracing
/// costs a command").
pub fn invocation_spans() -> bool {
    enabled()
        || LOG_SPANS.load(Ordering::Relaxed)
        || tracing::enabled!(target: INVOCATION_TARGET, tracing::Level::DEBUG)
}

/// An invocation's span: `info_span!` under [`INVOCATION_TARGET`] when
/// [`invocation_spans`] says something reads it, else `Span::none()`.
macro_rules! invocation_span {
    ($name:literal, $($fields:tt)*) => {
        if $crate::telemetry::invocation_spans() {
            tracing::info_span!(target: $crate::telemetry::INVOCATION_TARGET, $name, $($fields)*)
        } else {
            tracing::Span::none()
        }
    };
}
pub(crate) use invocation_span;

/// Says that the log filter selects by span (an `EnvFilter` with span
/// directives such as `[invoke{entity_type=stock}]=trace`), so that
/// invocations keep their spans whatever the level.
pub fn log_spans(on: bool) {
    LOG_SPANS.store(on, Ordering::Relaxed);
}

/// Where traces go and what they are called.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The collector's OTLP/HTTP endpoint, e.g. `http://collector:4318`
    /// (`/v1/traces` is added unless the URL already ends with it).
    pub endpoint: String,
    /// `service.name` of every span (default `tessera`; `OTEL_SERVICE_NAME` wins).
    pub service_name: String,
    /// `service.instance.id`: this node, when known.
    pub instance: Option<String>,
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {message}")]
pub struct TelemetryError {
    /// The endpoint configured.
    pub endpoint: String,
    /// What went wrong.
    pub message: String,
}

/// The `tracing` layer that exports spans to `settings.endpoint`, and
/// turns propagation on. Call once, at start; [`shutdown`] flushes.
pub fn layer<S>(settings: &OtlpSettings) -> Result<impl tracing_subscriber::Layer<S> + use<S>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let endpoint = if settings.endpoint.trim_end_matches('/').ends_with("/v1/traces") {
        settings.endpoint.clone()
    } else {
        format!("{}/v1/traces", settings.endpoint.trim_end_matches('/'))
    };
    let err = |m: String| TelemetryError { endpoint: endpoint.clone(), message: m };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| err(e.to_string()))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| settings.service_name.clone());
    let mut resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new("process.pid", i64::from(std::process::id())));
    if let Some(id) = &settings.instance {
        resource = resource.with_attribute(opentelemetry::KeyValue::new("service.instance.id", id.clone()));
    }
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
    let tracer = provider.tracer("tessera");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Which spans are exported: info and above, except those of the
/// exporter's own HTTP stack and the storage engine's internals.
pub fn span_filter() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    let mut t = tracing_subscriber::filter::Targets::new().with_default(LevelFilter::INFO);
    for quiet in
        ["opentelemetry", "opentelemetry_sdk", "opentelemetry_otlp", "reqwest", "hyper", "hyper_util", "h2", "tower"]
    {
        t = t.with_target(quiet, LevelFilter::OFF);
    }
    t.with_target("fjall", LevelFilter::WARN).with_target("lsm_tree", LevelFilter::WARN)
}

/// Exports what is buffered and stops the exporter (at process end).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
        let _ = p.shutdown();
    }
}

/// Makes the trace context in `traceparent`/`tracestate` (as a request
/// carried them) the parent of `span`. Does nothing while tracing is off,
/// without a `traceparent`, or with one that does not parse.
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(tp) = traceparent.filter(|_| enabled()) else { return };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_owned(), tp.to_owned());
    if let Some(ts) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), ts.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

/// The current span's trace context as a `traceparent` value, to send
/// with a request (`None` while tracing is off).
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    fn logging(directives: &str) -> impl tracing::Subscriber + Send + Sync {
        let targets: tracing_subscriber::filter::Targets = directives.parse().expect("directives");
        tracing_subscriber::registry().with(targets).with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
    }

    #[test]
    fn invocations_have_no_span_that_only_info_logs_would_read() {
        tracing::subscriber::with_default(logging("info"), || assert!(!super::invocation_spans()));
    }

    /// What a log layer at `directives` writes for one line inside an invocation's span.
    fn a_line_inside_an_invocation(directives: &str) -> String {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let writer = move || Writer(sink.clone());
        let targets: tracing_subscriber::filter::Targets = directives.parse().expect("directives");
        let logs = tracing_subscriber::registry()
            .with(targets)
            .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer));
        tracing::subscriber::with_default(logs, || {
            let span = invocation_span!("invoke", entity_id = "sku-42", invocation_id = "inv-1");
            span.in_scope(|| tracing::warn!("inside"));
        });
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    struct Writer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_invocations_log_lines_carry_its_span_only_with_the_target_at_debug() {
        let plain = a_line_inside_an_invocation("info");
        assert!(plain.contains("inside") && !plain.contains("invoke{"), "{plain}");
        let detailed = a_line_inside_an_invocation("info,tessera::invocation=debug");
        assert!(
            detailed.contains("invoke{entity_id=\"sku-42\" invocation_id=\"inv-1\"}: ") && detailed.contains("inside"),
            "{detailed}"
        );
    }

    #[test]
    fn the_invocation_target_at_debug_gives_invocations_their_spans() {
        tracing::subscriber::with_default(logging("warn,tessera::invocation=debug"), || {
            assert!(super::invocation_spans());
        });
        tracing::subscriber::with_default(logging("debug"), || assert!(super::invocation_spans()));
    }
}
