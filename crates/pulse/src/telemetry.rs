//! Logs and traces. Logs are structured JSON lines (or pretty text) on stderr, filtered by
//! `RUST_LOG` or the configured level, and carry the trace id of the request they belong to.
//! Traces are OpenTelemetry spans, exported over OTLP/HTTP when an endpoint is configured. Without
//! one no tracer is installed at all, so tracing costs nothing; the context still travels: the
//! HTTP layer makes each request's (continuing the caller's trace id), answers it in the
//! response's `traceparent` and runs the request under it (`pulse_trace::TraceContext::scope`),
//! so it reaches the outbox row and the record headers.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{Config, LogFormat};

/// The installed tracer provider, if any; [`Telemetry::shutdown`] flushes spans still buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(&self) {
        if let Some(Err(err)) = self.provider.as_ref().map(SdkTracerProvider::shutdown) {
            tracing::debug!(error = %err, "tracer provider shutdown");
        }
    }
}

/// Builds the tracer provider the configuration asks for and installs logging and tracing.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let provider = match &config.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let url = traces_url(endpoint);
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(&url)
                .with_timeout(std::time::Duration::from_secs(config.backend_timeout_secs))
                .build()
                .with_context(|| format!("cannot set up the OTLP exporter to {url}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
                .with_resource(Resource::builder().with_service_name("pulse").build())
                .build();
            Some(provider)
        }
    };
    Ok(install(config, provider))
}

/// The log layer. JSON lines list the spans they happened in with their fields, so a line logged
/// while serving a request carries the request span's `trace_id`.
fn log_layer<S, W>(format: LogFormat, ansi: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    }
}

/// `…/v1/traces` of an OTLP/HTTP endpoint given as its base URL.
fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

/// Installs the global subscriber, with `provider` behind its spans when given. The first call in
/// a process wins (tests build several applications in one process, or install an in-memory
/// exporter first); later calls only hand back their provider.
pub fn install(config: &Config, provider: Option<SdkTracerProvider>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = log_layer(config.log_format, ansi, std::io::stderr);
    // Spans are filtered on their own: a quiet log level must not switch tracing off.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("pulse"))
            .with_filter(LevelFilter::INFO)
    });
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init();
    // Already installed: keep the first subscriber.
    drop(installed);
    Telemetry { provider }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_log_lines_carry_the_trace_id_of_the_request_they_belong_to() {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = lines.clone();
        let writer = move || SharedBuffer(sink.clone());
        let subscriber =
            tracing_subscriber::registry().with(log_layer(LogFormat::Json, false, writer));
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!(
                "http.request",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            let _request = request.enter();
            let _inner = tracing::info_span!("orders.place").entered();
            tracing::warn!("something worth a look");
        });
        let written = String::from_utf8(lines.lock().expect("lock").clone()).expect("utf-8");
        let line: serde_json::Value = serde_json::from_str(written.trim()).expect("one JSON line");
        assert_eq!(line["message"], "something worth a look");
        assert_eq!(
            line["spans"][0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
            "{line}"
        );
    }

    /// A writer into shared memory, for reading what the log layer wrote.
    struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
