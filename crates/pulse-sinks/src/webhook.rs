//! `webhook_sink`: each event POSTed as JSON to a tenant's URL, signed (see
//! [`signature`] and `docs/WEBHOOKS.md`), through a client that refuses loopback, private,
//! link-local and other non-public targets unless the deployment allows them ([`outbound`]).
//!
//! The sink never retries by itself: it answers `Retry` for what may pass later (5xx, 408, 429,
//! timeouts, connection and DNS failures) and the pipeline parks the event with backoff, or
//! `Error` for what will not (any other status, a redirect, a refused target), which dead-letters
//! it. A delivery may repeat (a timeout after the receiver took it, a crash before the delivery
//! record): `Idempotency-Key` carries the event id so the receiver can tell.

pub use pulse_outbound::signature;
use pulse_outbound::{guard, verdict_of_failure, verdict_of_response, Verdict};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pulse_gateway::envelope::CanonicalEvent;
use pulse_gateway::plugin::{PluginContext, PluginInfo, SinkOutcome, SinkPlugin};
use pulse_gateway::registry::{PluginConfigError, PluginRegistry};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Url;
use serde::Deserialize;
use tokio::time::Instant;

/// Shortest secret accepted: an HMAC key a person can guess is no signature.
const MIN_SECRET_CHARS: usize = 16;
/// Longest secret accepted (HMAC-SHA256 hashes longer keys down anyway).
const MAX_SECRET_CHARS: usize = 1_024;
/// Most extra headers a sink may send.
const MAX_EXTRA_HEADERS: usize = 32;
/// Longest extra header value.
const MAX_HEADER_VALUE_CHARS: usize = 4_096;
/// What the budget adds to the request timeout: signing, and handing the outcomes back.
const BUDGET_MARGIN: Duration = Duration::from_secs(1);

/// Request headers a tenant may not set: hop-by-hop ones (they describe one connection, not
/// the request) and the ones the sink sets itself, which a receiver must be able to trust.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-type",
    "content-length",
    "host",
    "idempotency-key",
    "traceparent",
    "tracestate",
];
/// Every `pulse-*` header is the sink's (the signature scheme's, now or later).
const RESERVED_HEADER_PREFIX: &str = "pulse-";

const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
const EVENT_ID_HEADER: &str = "pulse-event-id";
const PLUGINS_HEADER: &str = "pulse-plugins";

/// Outbound HTTP policy of a deployment (from the config file; tests allow private targets).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Whether webhooks may reach loopback, private, link-local, CGNAT and other non-public
    /// addresses (a test rig, or a deployment whose receivers are all inside its network).
    pub allow_private_targets: bool,
    /// A sink's request timeout when its config sets none.
    pub default_timeout_ms: u64,
    /// The longest request timeout a sink may set.
    pub max_timeout_ms: u64,
    /// The `User-Agent` of every webhook request.
    pub user_agent: String,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private_targets: false,
            default_timeout_ms: 10_000,
            max_timeout_ms: 30_000,
            user_agent: concat!("pulse-webhook/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl WebhookSettings {
    /// Why the settings are unusable, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_timeout_ms == 0 || self.default_timeout_ms == 0 {
            return Err(
                "webhooks.default_timeout_ms and webhooks.max_timeout_ms must be positive".into(),
            );
        }
        if self.default_timeout_ms > self.max_timeout_ms {
            return Err(
                "webhooks.default_timeout_ms must not exceed webhooks.max_timeout_ms".into(),
            );
        }
        if HeaderValue::from_str(&self.user_agent).is_err() {
            return Err("webhooks.user_agent must be visible ASCII (a valid header value)".into());
        }
        Ok(())
    }
}

/// A sink's `config`, as written; [`WebhookSink::from_config`] checks it. Required fields are
/// options here so that a missing one is refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookConfig {
    url: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
}

/// The `webhook_sink` of one pipeline: its URL, secret, extra headers and guarded client.
#[derive(Clone)]
pub struct WebhookSink {
    url: Url,
    secret: Arc<[u8]>,
    headers: HeaderMap,
    timeout: Duration,
    client: reqwest::Client,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret and the extra headers (tokens, as a rule) stay out of logs.
        f.debug_struct("WebhookSink")
            .field("url", &self.url.as_str())
            .field("secret", &"<redacted>")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl WebhookSink {
    /// Its registry name.
    pub const NAME: &'static str = "webhook_sink";

    /// The sink `config` describes under the deployment's `settings`, or the field it refuses.
    pub fn from_config(
        config: &serde_json::Value,
        settings: &WebhookSettings,
    ) -> Result<Self, PluginConfigError> {
        settings
            .validate()
            .map_err(|message| PluginConfigError::new("", message))?;
        let config: WebhookConfig = PluginConfigError::parse(config)?;
        let url = check_url(config.url.as_deref(), settings)?;
        let secret = check_secret(config.secret.as_deref())?;
        let headers = check_headers(&config.headers)?;
        let timeout_ms = config.timeout_ms.unwrap_or(settings.default_timeout_ms);
        if timeout_ms == 0 || timeout_ms > settings.max_timeout_ms {
            return Err(PluginConfigError::new(
                "timeout_ms",
                format!(
                    "must be between 1 and {} (this deployment's webhooks.max_timeout_ms)",
                    settings.max_timeout_ms
                ),
            ));
        }
        let timeout = Duration::from_millis(timeout_ms);
        let client = guard::client(
            settings.allow_private_targets,
            &settings.user_agent,
            timeout,
        )
        .map_err(|err| PluginConfigError::new("", format!("no HTTP client: {err}")))?;
        Ok(Self {
            url,
            secret: secret.as_bytes().into(),
            headers,
            timeout,
            client,
        })
    }

    /// One POST of `event`, given at most `timeout`.
    async fn deliver(
        &self,
        event: &CanonicalEvent,
        ctx: &PluginContext,
        timeout: Duration,
    ) -> SinkOutcome {
        let Ok(event_id) = HeaderValue::from_str(&event.event_id) else {
            return SinkOutcome::Error {
                reason: "the event id is not a valid HTTP header value".into(),
            };
        };
        let body = serde_json::to_vec(&event.to_json()).expect("a JSON value always serialises");
        let timestamp = ctx.clock.now_ms().div_euclid(1_000);
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(timeout)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_KEY_HEADER, event_id.clone())
            .header(EVENT_ID_HEADER, event_id)
            .header(signature::TIMESTAMP_HEADER, timestamp)
            .header(
                signature::SIGNATURE_HEADER,
                signature::sign(&self.secret, timestamp, &body),
            );
        // Plugin names and versions are constants of the code: always a valid header value.
        if let Ok(plugins) = HeaderValue::from_str(&ctx.versions_json()) {
            request = request.header(PLUGINS_HEADER, plugins);
        }
        if let Some(trace) = &ctx.trace {
            for (name, value) in trace.headers() {
                request = request.header(name, value);
            }
        }
        match request.body(body).send().await {
            Ok(response) => outcome_of(verdict_of_response(response).await),
            Err(err) => outcome_of(verdict_of_failure(
                &err.without_url(),
                timeout,
                self.timeout,
            )),
        }
    }
}

#[async_trait]
impl SinkPlugin for WebhookSink {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: Self::NAME,
            version: "1.0.0",
        }
    }

    fn budget(&self) -> Duration {
        self.timeout + BUDGET_MARGIN
    }

    async fn send(&self, event: &CanonicalEvent, ctx: &PluginContext) -> SinkOutcome {
        self.deliver(event, ctx, self.timeout).await
    }

    /// One by one in order, stopping at the first retry like the default, but all within one
    /// request timeout: past the budget the pipeline would count every event of the batch as
    /// undelivered, those the receiver already took included.
    async fn send_batch(&self, events: &[CanonicalEvent], ctx: &PluginContext) -> Vec<SinkOutcome> {
        let deadline = Instant::now() + self.timeout;
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = if left.is_zero() {
                SinkOutcome::Retry {
                    reason: format!(
                        "the batch used up its {} ms before this event",
                        self.timeout.as_millis()
                    ),
                }
            } else {
                self.deliver(event, ctx, left).await
            };
            if let SinkOutcome::Retry { .. } = outcome {
                outcomes.resize(events.len(), outcome);
                break;
            }
            outcomes.push(outcome);
        }
        outcomes
    }
}

/// Registers `webhook_sink`, its targets checked against `settings`.
pub(crate) fn register(registry: &mut PluginRegistry, settings: WebhookSettings) {
    registry.register_sink(WebhookSink::NAME, move |config| {
        Ok(Arc::new(WebhookSink::from_config(config, &settings)?))
    });
}

fn check_url(url: Option<&str>, settings: &WebhookSettings) -> Result<Url, PluginConfigError> {
    pulse_outbound::check_url(url, settings.allow_private_targets, "events are POSTed to")
        .map_err(|message| PluginConfigError::new("url", message))
}

fn check_secret(secret: Option<&str>) -> Result<&str, PluginConfigError> {
    let refuse = |message: String| PluginConfigError::new("secret", message);
    let secret =
        secret.ok_or_else(|| refuse("required: the key requests are signed with".into()))?;
    let chars = secret.chars().count();
    if !(MIN_SECRET_CHARS..=MAX_SECRET_CHARS).contains(&chars) {
        return Err(refuse(format!(
            "must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters, not {chars}"
        )));
    }
    // A receiver verifying with the trimmed secret would refuse every request.
    if secret.trim() != secret {
        return Err(refuse("starts or ends with whitespace".into()));
    }
    Ok(secret)
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<HeaderMap, PluginConfigError> {
    if headers.len() > MAX_EXTRA_HEADERS {
        return Err(PluginConfigError::new(
            "headers",
            format!("at most {MAX_EXTRA_HEADERS} headers"),
        ));
    }
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let refuse = |message: &str| PluginConfigError::new(format!("headers.{name}"), message);
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| refuse("not a valid HTTP header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str())
            || header.as_str().starts_with(RESERVED_HEADER_PREFIX)
        {
            return Err(refuse(
                "set by the sink itself (or hop-by-hop); choose another name",
            ));
        }
        if value.len() > MAX_HEADER_VALUE_CHARS {
            return Err(refuse("value longer than 4096 characters"));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| refuse("value is not a valid HTTP header value (visible ASCII)"))?;
        // Header names are case-insensitive: `X-A` and `x-a` would be one header sent twice.
        if map.insert(header, value).is_some() {
            return Err(refuse("given twice (names are case-insensitive)"));
        }
    }
    Ok(map)
}

/// The sink's outcome of a verdict.
fn outcome_of(verdict: Verdict) -> SinkOutcome {
    match verdict {
        Verdict::Taken => SinkOutcome::Ok,
        Verdict::Retry { reason } => SinkOutcome::Retry { reason },
        Verdict::Refused { reason } => SinkOutcome::Error { reason },
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::http::{Method, Uri};
    use axum::response::{IntoResponse, Response};
    use bytes::Bytes;
    use hmac::{Hmac, Mac};
    use pulse_core::clock::ManualClock;
    use pulse_core::TenantId;
    use pulse_gateway::envelope::Source;
    use pulse_trace::TraceContext;
    use reqwest::header::{LOCATION, RETRY_AFTER};
    use reqwest::StatusCode;
    use serde_json::{json, Value};
    use sha2::Sha256;

    use super::*;

    /// 2025-03-01T12:00:00.123Z: the clock of every test's context.
    const NOW_MS: i64 = 1_740_830_400_123;
    const SECRET: &str = "whsec_0123456789abcdef";
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// One request as the test receiver saw it.
    #[derive(Debug, Clone)]
    struct Received {
        method: Method,
        path: String,
        headers: HeaderMap,
        body: Bytes,
    }

    type Log = Arc<Mutex<Vec<Received>>>;

    /// Records every request, then answers by path: `/status/{code}` with that status (a
    /// `Retry-After` on 429 and 503, a `Location` on 3xx), `/slow` after 5 s, `/slowish` after
    /// 300 ms, anything else 200.
    async fn receive(
        State(log): State<Log>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let path = uri.path().to_owned();
        log.lock().unwrap().push(Received {
            method,
            path: path.clone(),
            headers,
            body,
        });
        match path.as_str() {
            "/slow" => tokio::time::sleep(Duration::from_secs(5)).await,
            "/slowish" => tokio::time::sleep(Duration::from_millis(300)).await,
            _ => {}
        }
        let Some(code) = path.strip_prefix("/status/") else {
            return (StatusCode::OK, "thanks").into_response();
        };
        let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        let mut response = (status, "receiver says no").into_response();
        if matches!(status.as_u16(), 429 | 503) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("7"));
        }
        if status.is_redirection() {
            response
                .headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/elsewhere"));
        }
        response
    }

    async fn receiver() -> (SocketAddr, Log) {
        let log = Log::default();
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, log)
    }

    fn testing() -> WebhookSettings {
        WebhookSettings {
            allow_private_targets: true,
            ..WebhookSettings::default()
        }
    }

    fn sink(url: String, timeout_ms: u64) -> WebhookSink {
        WebhookSink::from_config(
            &json!({"url": url, "secret": SECRET, "timeout_ms": timeout_ms}),
            &testing(),
        )
        .unwrap()
    }

    fn event(id: &str) -> CanonicalEvent {
        CanonicalEvent {
            event_id: id.into(),
            tenant: TenantId::parse("acme").unwrap(),
            event_type: "user_sign_up".into(),
            occurred_at_ms: NOW_MS - 5_000,
            received_at_ms: NOW_MS - 1_000,
            payload: Bytes::from_static(br#"{"user_id":"u_123","big":9007199254740993}"#),
            source: Source::Http,
            trace_id: None,
            idempotency_key: Some("client-key-1".into()),
        }
    }

    fn context(trace: Option<TraceContext>) -> PluginContext {
        PluginContext {
            tenant: TenantId::parse("acme").unwrap(),
            clock: Arc::new(ManualClock::new(NOW_MS)),
            trace,
            plugins: vec![
                PluginInfo {
                    name: "passthrough",
                    version: "1.0.0",
                },
                PluginInfo {
                    name: "webhook_sink",
                    version: "1.0.0",
                },
            ]
            .into(),
        }
    }

    /// What one event sent to `path` of a fresh receiver came to, and what the receiver saw.
    async fn outcome_at(path: &str, timeout_ms: u64) -> (SinkOutcome, Vec<Received>) {
        let (addr, log) = receiver().await;
        let sink = sink(format!("http://{addr}{path}"), timeout_ms);
        let outcome = sink.send(&event("e-1"), &context(None)).await;
        let received = log.lock().unwrap().clone();
        (outcome, received)
    }

    fn header<'a>(received: &'a Received, name: &str) -> &'a str {
        received
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    #[tokio::test]
    async fn a_2xx_is_ok_and_the_receiver_can_verify_the_signature_and_the_idempotency_key() {
        let (addr, log) = receiver().await;
        let sink = WebhookSink::from_config(
            &json!({"url": format!("http://{addr}/hooks/pulse?source=test"), "secret": SECRET,
                "headers": {"Authorization": "Bearer t0ken", "X-Team": "growth"}}),
            &testing(),
        )
        .unwrap();
        let trace = TraceContext::from_headers(|name| match name {
            "traceparent" => Some(TRACEPARENT),
            "tracestate" => Some("congo=t61rcWkgMzE"),
            _ => None,
        });
        let ctx = context(trace);
        let sent = event("e-42");

        assert_eq!(sink.send(&sent, &ctx).await, SinkOutcome::Ok);

        let received = log.lock().unwrap().clone();
        assert_eq!(received.len(), 1, "{received:?}");
        let request = &received[0];
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/hooks/pulse");
        assert_eq!(header(request, "content-type"), "application/json");
        assert_eq!(header(request, "idempotency-key"), "e-42");
        assert_eq!(header(request, "pulse-event-id"), "e-42");
        assert_eq!(header(request, "pulse-timestamp"), "1740830400");
        assert_eq!(header(request, "pulse-plugins"), ctx.versions_json());
        assert_eq!(header(request, "authorization"), "Bearer t0ken");
        assert_eq!(header(request, "x-team"), "growth");
        assert_eq!(header(request, "traceparent"), TRACEPARENT);
        assert_eq!(header(request, "tracestate"), "congo=t61rcWkgMzE");
        assert!(header(request, "user-agent").starts_with("pulse-webhook/"));
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body, sent.to_json());

        // What a receiver does (docs/WEBHOOKS.md), with its own HMAC over the raw body.
        let timestamp = header(request, "pulse-timestamp");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(&request.body);
        let claimed = header(request, "pulse-signature")
            .strip_prefix("v1=")
            .expect("a v1 signature");
        mac.verify_slice(&hex::decode(claimed).unwrap())
            .expect("the signature verifies with the secret");
    }

    #[tokio::test]
    async fn server_errors_throttling_and_request_timeouts_are_retried() {
        for code in [500, 502, 503, 504, 429, 408] {
            let (outcome, received) = outcome_at(&format!("/status/{code}"), 2_000).await;
            let SinkOutcome::Retry { reason } = outcome else {
                panic!("{code}: {outcome:?}");
            };
            assert!(reason.starts_with(&format!("HTTP {code}")), "{reason}");
            assert_eq!(received.len(), 1, "{code}: the sink retries nothing itself");
            if matches!(code, 429 | 503) {
                assert!(reason.ends_with("(Retry-After: 7)"), "{reason}");
            }
        }
    }

    #[tokio::test]
    async fn other_client_errors_and_redirects_are_errors_and_redirects_are_not_followed() {
        for code in [400, 401, 404, 410, 422, 301, 302, 307] {
            let (outcome, received) = outcome_at(&format!("/status/{code}"), 2_000).await;
            let SinkOutcome::Error { reason } = outcome else {
                panic!("{code}: {outcome:?}");
            };
            assert!(reason.starts_with(&format!("HTTP {code}")), "{reason}");
            let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
            assert_eq!(paths, [format!("/status/{code}")], "{code}");
            if code < 400 {
                assert!(
                    reason.contains("redirects are not followed (to /elsewhere)"),
                    "{reason}"
                );
            } else {
                assert!(reason.ends_with(": receiver says no"), "{reason}");
            }
        }
    }

    #[tokio::test]
    async fn a_receiver_slower_than_the_timeout_is_retried_without_waiting_for_it() {
        let started = Instant::now();
        let (outcome, received) = outcome_at("/slow", 300).await;
        assert_eq!(
            outcome,
            SinkOutcome::Retry {
                reason: "no response within 300 ms".into()
            }
        );
        assert_eq!(received.len(), 1);
        // The receiver answers after 5 s.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_target_that_refuses_connections_is_retried() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let outcome = sink(format!("http://{addr}/ok"), 2_000)
            .send(&event("e-1"), &context(None))
            .await;
        let SinkOutcome::Retry { reason } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(reason.starts_with("could not connect: "), "{reason}");
    }

    #[tokio::test]
    async fn a_batch_stops_when_its_time_is_up_and_keeps_what_was_delivered() {
        let (addr, log) = receiver().await;
        // Each answer takes 300 ms; six would take 1.8 s against a 1 s budget.
        let sink = sink(format!("http://{addr}/slowish"), 1_000);
        let events: Vec<CanonicalEvent> = (0..6).map(|i| event(&format!("e-{i}"))).collect();
        let started = Instant::now();

        let outcomes = sink.send_batch(&events, &context(None)).await;

        assert!(started.elapsed() < sink.budget(), "{:?}", started.elapsed());
        assert_eq!(outcomes.len(), 6);
        assert_eq!(outcomes[0], SinkOutcome::Ok, "{outcomes:?}");
        assert!(
            matches!(outcomes[5], SinkOutcome::Retry { .. }),
            "{outcomes:?}"
        );
        let delivered = outcomes
            .iter()
            .take_while(|o| **o == SinkOutcome::Ok)
            .count();
        assert!(
            outcomes[delivered..]
                .iter()
                .all(|o| matches!(o, SinkOutcome::Retry { .. })),
            "the rest wait behind the first retry: {outcomes:?}"
        );
        // Those that were delivered, and at most the one cut short.
        let reached = log.lock().unwrap().len();
        assert!((delivered..=delivered + 1).contains(&reached), "{reached}");
    }

    #[test]
    fn the_default_policy_refuses_private_literal_addresses_when_configured() {
        for url in [
            "http://127.0.0.1:8080/ok",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.0.10/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://0/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fe80::1]/",
            "http://[fc00::1]/",
        ] {
            let config = json!({"url": url, "secret": SECRET});
            let err = WebhookSink::from_config(&config, &WebhookSettings::default()).unwrap_err();
            assert_eq!(err.field, "url", "{url}: {err}");
            assert!(
                err.message.contains("public addresses only"),
                "{url}: {err}"
            );
            // The same URL is fine where the deployment allows private targets.
            WebhookSink::from_config(&config, &testing()).unwrap();
        }
        for public in [
            "http://93.184.215.14/hook",
            "http://[2606:4700:4700::1111]:8080/",
        ] {
            let config = json!({"url": public, "secret": SECRET});
            WebhookSink::from_config(&config, &WebhookSettings::default()).unwrap();
        }
    }

    #[tokio::test]
    async fn the_default_policy_refuses_a_name_that_resolves_to_loopback_when_sending() {
        let (addr, log) = receiver().await;
        let url = format!("http://localhost:{}/ok", addr.port());
        let config = json!({"url": url, "secret": SECRET});
        let guarded = WebhookSink::from_config(&config, &WebhookSettings::default()).unwrap();

        let outcome = guarded.send(&event("e-1"), &context(None)).await;

        let SinkOutcome::Error { reason } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(
            reason.starts_with("target refused: localhost resolves only to addresses"),
            "{reason}"
        );
        assert!(reason.contains("loopback"), "{reason}");
        assert!(
            log.lock().unwrap().is_empty(),
            "nothing reached the receiver"
        );
        // The receiver is up: where private targets are allowed the same URL is delivered to.
        let allowed = WebhookSink::from_config(&config, &testing()).unwrap();
        assert_eq!(
            allowed.send(&event("e-1"), &context(None)).await,
            SinkOutcome::Ok
        );
    }

    #[test]
    fn config_errors_name_their_field() {
        let valid = json!({"url": "http://example.com/hook", "secret": SECRET});
        let patched = |patch: Value| {
            let mut config = valid.clone();
            for (key, value) in patch.as_object().unwrap() {
                config[key] = value.clone();
            }
            config
        };
        let refused = |patch: Value, field: &str, says: &str| {
            let config = patched(patch);
            let err = WebhookSink::from_config(&config, &WebhookSettings::default()).unwrap_err();
            assert_eq!(err.field, field, "{config}: {err}");
            assert!(err.message.contains(says), "{config}: {err}");
        };
        let headers = |name: &str, value: &str| json!({"headers": {name: value}});
        let by_the_sink = "set by the sink";

        refused(json!({"url": null}), "url", "required");
        refused(json!({"secret": null}), "secret", "required");
        refused(json!({"url": "https://example.com/hook"}), "url", "TLS");
        refused(json!({"url": "ftp://example.com/"}), "url", "not http");
        refused(json!({"url": "example.com/hook"}), "url", "not a valid URL");
        refused(json!({"url": "http://"}), "url", "not a valid URL");
        refused(
            json!({"url": "http://user:pw@example.com/"}),
            "url",
            "credentials",
        );
        refused(
            json!({"url": "http://user@example.com/"}),
            "url",
            "credentials",
        );
        refused(json!({"secret": "short"}), "secret", "16 to 1024");
        refused(json!({"secret": "s".repeat(1_025)}), "secret", "16 to 1024");
        refused(
            json!({"secret": format!("{SECRET}\n")}),
            "secret",
            "whitespace",
        );
        refused(
            headers("Content-Type", "text/plain"),
            "headers.Content-Type",
            by_the_sink,
        );
        refused(
            headers("content-length", "1"),
            "headers.content-length",
            by_the_sink,
        );
        refused(headers("Host", "other"), "headers.Host", by_the_sink);
        refused(
            headers("Idempotency-Key", "k"),
            "headers.Idempotency-Key",
            by_the_sink,
        );
        refused(
            headers("Pulse-Signature", "v1=0"),
            "headers.Pulse-Signature",
            by_the_sink,
        );
        refused(
            headers("pulse-timestamp", "0"),
            "headers.pulse-timestamp",
            by_the_sink,
        );
        refused(
            headers("traceparent", TRACEPARENT),
            "headers.traceparent",
            by_the_sink,
        );
        refused(
            headers("Connection", "close"),
            "headers.Connection",
            "hop-by-hop",
        );
        refused(
            headers("Transfer-Encoding", "gzip"),
            "headers.Transfer-Encoding",
            "hop-by-hop",
        );
        refused(
            headers("bad header", "x"),
            "headers.bad header",
            "header name",
        );
        refused(
            headers("X-Token", "a\nb"),
            "headers.X-Token",
            "header value",
        );
        refused(
            json!({"headers": {"X-A": "1", "x-a": "2"}}),
            "headers.x-a",
            "twice",
        );
        refused(
            json!({"timeout_ms": 0}),
            "timeout_ms",
            "between 1 and 30000",
        );
        refused(
            json!({"timeout_ms": 30_001}),
            "timeout_ms",
            "between 1 and 30000",
        );
        refused(
            json!({"uri": "http://example.com/"}),
            "",
            "unknown field `uri`",
        );

        // What the refusals above differ in is all that is wrong with them.
        let accepted = json!({"headers": {"Authorization": "Bearer x", "X-A": "1"},
            "timeout_ms": 30_000});
        WebhookSink::from_config(&patched(accepted), &WebhookSettings::default()).unwrap();
    }

    #[test]
    fn the_registry_builds_the_sink_and_names_a_refused_field_by_its_path() {
        let mut registry = PluginRegistry::with_builtin_transforms();
        register(&mut registry, WebhookSettings::default());
        let sink = |config: Value| {
            json!({"plugins": {"sinks": [
                {"name": "webhook_sink", "config": config}]}})
        };

        let built = registry
            .parse(&sink(
                json!({"url": "http://example.com/hook", "secret": SECRET, "timeout_ms": 2_500}),
            ))
            .unwrap();
        let plugin = &built.sinks[0].plugin;
        assert_eq!(
            plugin.info(),
            PluginInfo {
                name: "webhook_sink",
                version: "1.0.0"
            }
        );
        assert!(!plugin.idempotent());
        assert_eq!(plugin.budget(), Duration::from_millis(3_500));

        let err = registry
            .parse(&sink(json!({"url": "http://127.0.0.1/", "secret": SECRET})))
            .unwrap_err();
        assert_eq!(err.field, "plugins.sinks[0].config.url", "{err}");
        let err = registry
            .parse(&sink(
                json!({"url": "http://example.com/hook", "secret": SECRET,
                "headers": {"Host": "x"}}),
            ))
            .unwrap_err();
        assert_eq!(err.field, "plugins.sinks[0].config.headers.Host", "{err}");
    }

    #[test]
    fn the_default_timeout_and_the_deployments_limits_apply() {
        let config = json!({"url": "http://example.com/hook", "secret": SECRET});
        let sink = WebhookSink::from_config(&config, &WebhookSettings::default()).unwrap();
        assert_eq!(sink.budget(), Duration::from_millis(10_000) + BUDGET_MARGIN);
        let strict = WebhookSettings {
            default_timeout_ms: 1_000,
            max_timeout_ms: 2_000,
            ..WebhookSettings::default()
        };
        let sink = WebhookSink::from_config(&config, &strict).unwrap();
        assert_eq!(sink.budget(), Duration::from_millis(1_000) + BUDGET_MARGIN);
        let mut config = config;
        config["timeout_ms"] = json!(2_001);
        assert_eq!(
            WebhookSink::from_config(&config, &strict)
                .unwrap_err()
                .field,
            "timeout_ms"
        );
        let inverted = WebhookSettings {
            default_timeout_ms: 3_000,
            max_timeout_ms: 2_000,
            ..WebhookSettings::default()
        };
        assert!(inverted
            .validate()
            .unwrap_err()
            .contains("default_timeout_ms"));
        let bad_agent = WebhookSettings {
            user_agent: "pulse\n".into(),
            ..WebhookSettings::default()
        };
        assert!(bad_agent.validate().unwrap_err().contains("user_agent"));
        assert_eq!(WebhookSettings::default().validate(), Ok(()));
    }

    #[test]
    fn settings_read_from_a_config_file_keep_their_defaults_and_refuse_unknown_keys() {
        let settings: WebhookSettings =
            serde_json::from_value(json!({"allow_private_targets": true})).unwrap();
        assert_eq!(settings, testing());
        assert!(serde_json::from_value::<WebhookSettings>(json!({"allow_private": true})).is_err());
        assert_eq!(
            WebhookSettings::default().user_agent,
            format!("pulse-webhook/{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn the_secret_and_header_values_stay_out_of_debug_output() {
        let sink = WebhookSink::from_config(
            &json!({"url": "http://example.com/hook", "secret": SECRET,
                "headers": {"Authorization": "Bearer t0ken"}}),
            &WebhookSettings::default(),
        )
        .unwrap();
        let debug = format!("{sink:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!debug.contains("t0ken"), "{debug}");
        assert!(debug.contains("authorization"), "{debug}");
    }
}
