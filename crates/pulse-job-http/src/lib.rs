//! The jobs' HTTP handlers: a tenant registers a URL for a job type, and each attempt is POSTed to it,
//! signed with the handler's secret exactly as the gateway's webhooks are (`pulse-outbound`,
//! `docs/WEBHOOKS.md`), through the same guarded client (loopback, private and link-local
//! targets refused unless the operator allows them).
//!
//! 2xx: success, the body (up to [`MAX_RESULT_BYTES`]) kept as the result; 408, 429, 5xx, a
//! timeout or a connection failure: the attempt failed and is retried; any other status (4xx, a
//! redirect) or a refused target: the job fails for good.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pulse_outbound::{guard, signature, verdict_of_failure, verdict_of_response, Verdict};
use reqwest::header::CONTENT_TYPE;
use reqwest::Url;
use serde_json::value::RawValue;

use pulse_jobs::model::StoredHandler;
use pulse_jobs::registry::{HandlerFactory, HandlerOutcome, JobContext, JobHandler};

/// Most bytes of a handler's answer kept as the job's result; the rest is not read.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// `Pulse-Job-Id`: the job's id (also sent as `Idempotency-Key`: every attempt of a job has it).
pub const JOB_ID_HEADER: &str = "pulse-job-id";
/// `Pulse-Job-Attempt`: which attempt this is, from 1.
pub const ATTEMPT_HEADER: &str = "pulse-job-attempt";

/// The deployment's outbound policy for HTTP handlers (the `[webhooks]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHandlerSettings {
    /// Whether handlers may be on loopback, private and other non-public addresses.
    pub allow_private_targets: bool,
    /// The `User-Agent` of every call.
    pub user_agent: String,
}

impl Default for HttpHandlerSettings {
    fn default() -> Self {
        Self {
            allow_private_targets: false,
            user_agent: concat!("pulse-jobs/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Checks a handler URL under `settings`, naming what is wrong.
pub fn check_handler_url(url: &str, settings: &HttpHandlerSettings) -> Result<Url, String> {
    pulse_outbound::check_url(
        Some(url),
        settings.allow_private_targets,
        "each job is POSTed to",
    )
}

/// Builds the [`HttpHandler`] of every stored registration under the deployment's policy.
#[derive(Debug, Clone, Default)]
pub struct HttpHandlers {
    /// The outbound policy.
    pub settings: HttpHandlerSettings,
}

impl HandlerFactory for HttpHandlers {
    fn check_url(&self, url: &str) -> Result<(), String> {
        check_handler_url(url, &self.settings).map(|_| ())
    }

    fn build(&self, stored: &StoredHandler) -> Result<Arc<dyn JobHandler>, String> {
        Ok(Arc::new(HttpHandler::new(stored, &self.settings)?))
    }
}

/// One tenant's HTTP handler of one job type.
#[derive(Clone)]
pub struct HttpHandler {
    url: Url,
    secret: Vec<u8>,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHandler")
            .field("url", &self.url.as_str())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl HttpHandler {
    /// The handler `stored` describes, or why this process cannot call it.
    pub fn new(stored: &StoredHandler, settings: &HttpHandlerSettings) -> Result<Self, String> {
        let url = check_handler_url(&stored.url, settings)?;
        // Each attempt sets its own timeout; this one only bounds a request that sets none.
        let client = guard::client(
            settings.allow_private_targets,
            &settings.user_agent,
            Duration::from_secs(3_600),
        )
        .map_err(|err| format!("no HTTP client: {err}"))?;
        Ok(Self {
            url,
            secret: stored.secret.as_bytes().to_vec(),
            client,
        })
    }

    /// The body of an attempt: the job's envelope with its payload as sent (JSON), or base64
    /// when the payload is not JSON (a job enqueued in-process with raw bytes).
    fn body(ctx: &JobContext) -> Vec<u8> {
        let job = &ctx.lease.job;
        let mut body = serde_json::json!({
            "job_id": job.id,
            "job_type": job.job_type,
            "tenant_id": job.tenant.as_str(),
            "queue": job.queue,
            "attempt": job.attempts,
            "max_attempts": job.max_attempts,
            "created_at_ms": job.created_at_ms,
        });
        let object = body.as_object_mut().expect("built as an object");
        match serde_json::from_slice::<Box<RawValue>>(&job.payload) {
            Ok(raw) => {
                object.insert(
                    "payload".into(),
                    serde_json::to_value(raw).unwrap_or_default(),
                );
            }
            Err(_) => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD.encode(&job.payload);
                object.insert("payload_base64".into(), encoded.into());
            }
        }
        if let Some(metadata) = job
            .metadata
            .as_deref()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        {
            object.insert("metadata".into(), metadata);
        }
        serde_json::to_vec(&body).expect("a JSON value always serialises")
    }
}

#[async_trait]
impl JobHandler for HttpHandler {
    async fn run(&self, ctx: &JobContext) -> HandlerOutcome {
        let body = Self::body(ctx);
        let timestamp = ctx.now_ms.div_euclid(1_000);
        let job_id = ctx.lease.job.id.to_string();
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(ctx.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header("idempotency-key", job_id.as_str())
            .header(JOB_ID_HEADER, job_id.as_str())
            .header(ATTEMPT_HEADER, ctx.lease.job.attempts)
            .header(signature::TIMESTAMP_HEADER, timestamp)
            .header(
                signature::SIGNATURE_HEADER,
                signature::sign(&self.secret, timestamp, &body),
            );
        if let Some(trace) = &ctx.trace {
            for (name, value) in trace.headers() {
                request = request.header(name, value);
            }
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(err) => {
                return outcome_of(
                    verdict_of_failure(&err.without_url(), ctx.timeout, ctx.timeout),
                    None,
                )
            }
        };
        if !response.status().is_success() {
            return outcome_of(verdict_of_response(response).await, None);
        }
        let mut response = response;
        let mut result = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_RESULT_BYTES.saturating_sub(result.len());
                    result.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if result.len() >= MAX_RESULT_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                // The handler answered 2xx: the job is done even if its body broke off.
                Err(err) => {
                    tracing::debug!(error = %err, "a handler's 2xx body broke off; keeping what came");
                    break;
                }
            }
        }
        outcome_of(Verdict::Taken, Some(result))
    }
}

fn outcome_of(verdict: Verdict, result: Option<Vec<u8>>) -> HandlerOutcome {
    match verdict {
        Verdict::Taken => HandlerOutcome::Succeeded {
            result: result.filter(|body| !body.is_empty()),
        },
        Verdict::Retry { reason } => HandlerOutcome::Retry { error: reason },
        Verdict::Refused { reason } => HandlerOutcome::Fail { error: reason },
    }
}
