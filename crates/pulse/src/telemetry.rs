//! Logs and traces. Logs are structured JSON lines (or pretty text) on stderr, filtered by
//! `RUST_LOG` or the configured level, and carry the trace id of the request they belong to.
//! Traces are OpenTelemetry spans, exported over OTLP/HTTP when an endpoint is configured. Without
//! one no tracer is installed at all, so tracing costs nothing; responses still carry a
//! `traceparent` (continuing the caller's trace id) made by the HTTP layer.

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
    let logs = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
    };
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
    fn the_traces_path_is_added_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
