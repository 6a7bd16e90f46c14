//! W3C trace context across process boundaries, so one order is one trace from the HTTP request
//! through the outbox row, the relay's produce and the engine's consume to the cache write.
//!
//! A [`TraceContext`] is the pair of W3C headers (`traceparent`, `tracestate`) as text: it is
//! what an outbox row stores and what travels in log record headers. [`TraceContext::of`] reads
//! it from a `tracing` span (through the OpenTelemetry layer, when one is installed; without it
//! there is no context and nothing is recorded), [`TraceContext::adopt`] makes a new span a child
//! of one.
//!
//! Propagation does not depend on export: [`TraceContext::scope`] makes a context the current one
//! of a task (the HTTP layer scopes each request with its hop's context), and
//! [`TraceContext::current`] falls back to it when the current span has none, so the caller's
//! trace reaches the outbox row and the record headers also when no OpenTelemetry layer is
//! installed.
//!
//! Only *sampled* contexts are worth spans in per-record hot loops: [`TraceContext::is_sampled`]
//! tells, so an unexported trace costs nothing there.

use std::collections::HashMap;
use std::future::Future;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header that carries the trace and parent span ids.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header with vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` kept (the W3C limit).
const MAX_TRACESTATE_CHARS: usize = 512;

tokio::task_local! {
    /// The context of the task's unit of work (an HTTP request), set by [`TraceContext::scope`].
    static SCOPED: TraceContext;
}

/// A W3C trace context, as its header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// `00-{trace id}-{parent span id}-{flags}`.
    pub traceparent: String,
    /// Vendor trace state, when there is any.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context of `span`, or `None` when it has none (no OpenTelemetry layer installed, or
    /// the span is disabled).
    pub fn of(span: &tracing::Span) -> Option<Self> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut headers = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut headers);
        Self::from_headers(|name| headers.get(name).map(String::as_str))
    }

    /// The context of the current span or, when it has none (no OpenTelemetry layer installed,
    /// or a span the layer does not see), the one the task runs in under [`TraceContext::scope`].
    pub fn current() -> Option<Self> {
        Self::of(&tracing::Span::current()).or_else(|| SCOPED.try_with(Clone::clone).ok())
    }

    /// Runs `future` with this context as the task's current one (see [`TraceContext::current`]),
    /// so it travels whether or not spans are recorded. Not inherited by tasks spawned inside.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        SCOPED.scope(self, future).await
    }

    /// The context carried by headers, if they hold a well-formed `traceparent`.
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        let traceparent = get(TRACEPARENT)?.trim();
        if !is_well_formed(traceparent) {
            return None;
        }
        Some(Self {
            traceparent: traceparent.to_owned(),
            // W3C caps the header at 512 characters; a longer one is dropped rather than stored
            // with every outbox row and record.
            tracestate: get(TRACESTATE)
                .map(str::trim)
                .filter(|state| !state.is_empty() && state.len() <= MAX_TRACESTATE_CHARS)
                .map(str::to_owned),
        })
    }

    /// The headers to send: `traceparent`, and `tracestate` when there is one.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut headers = vec![(TRACEPARENT, self.traceparent.as_str())];
        if let Some(state) = &self.tracestate {
            headers.push((TRACESTATE, state.as_str()));
        }
        headers
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// Whether the trace is recorded (the `sampled` flag).
    pub fn is_sampled(&self) -> bool {
        self.traceparent
            .get(53..55)
            .and_then(|flags| u8::from_str_radix(flags, 16).ok())
            .is_some_and(|flags| flags & 1 == 1)
    }

    /// A context for a new unrecorded trace (random ids, `sampled` off): what a process that
    /// records no spans hands back to a caller that sent no context.
    pub fn new_unrecorded() -> Self {
        Self {
            traceparent: format!(
                "00-{:032x}-{:016x}-00",
                fastrand::u128(1..),
                fastrand::u64(1..)
            ),
            tracestate: None,
        }
    }

    /// The same trace with a new span id: the hop a process that records no spans adds.
    pub fn next_hop(&self) -> Self {
        let flags = self.traceparent.get(53..55).unwrap_or("00");
        Self {
            traceparent: format!("00-{}-{:016x}-{flags}", self.trace_id(), fastrand::u64(1..)),
            tracestate: self.tracestate.clone(),
        }
    }

    /// Makes `span` a child of this context. Call it right after creating the span, before it is
    /// entered; returns the span for chaining.
    pub fn adopt(&self, span: tracing::Span) -> tracing::Span {
        let headers: HashMap<String, String> = self
            .headers()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        let parent = TraceContextPropagator::new().extract(&headers);
        // Fails only without an OpenTelemetry layer (nothing to parent) or on a span already
        // started, which callers of `adopt` do not have: either way the span simply stays a root.
        let _ = span.set_parent(parent);
        span
    }
}

/// `00-` + 32 hex + `-` + 16 hex + `-` + 2 hex, with non-zero ids (W3C trace context level 1).
fn is_well_formed(traceparent: &str) -> bool {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let nonzero = |part: &str| part.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, span, flags]
        if hex(version, 2) && *version != "ff" && hex(trace, 32) && nonzero(trace)
            && hex(span, 16) && nonzero(span) && hex(flags, 2))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_otel<T>(run: impl FnOnce() -> T) -> T {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, run)
    }

    #[test]
    fn headers_are_read_only_when_well_formed() {
        let read = |value: &'static str| TraceContext::from_headers(|_| Some(value));
        let context = read(PARENT).expect("valid");
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(context.is_sampled());
        assert!(
            !read("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("valid")
                .is_sampled()
        );
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_oversized_tracestate_is_dropped() {
        let long = "k=".to_owned() + &"v".repeat(600);
        let read = TraceContext::from_headers(|name| match name {
            TRACEPARENT => Some(PARENT),
            _ => Some(long.as_str()),
        })
        .expect("valid traceparent");
        assert_eq!(read.tracestate, None);
    }

    #[test]
    fn contexts_made_without_spans_are_well_formed() {
        let root = TraceContext::new_unrecorded();
        let read = TraceContext::from_headers(|name| {
            (name == TRACEPARENT).then_some(root.traceparent.as_str())
        });
        assert_eq!(read.as_ref(), Some(&root));
        assert!(!root.is_sampled());
        let caller = TraceContext::from_headers(|name| (name == TRACEPARENT).then_some(PARENT))
            .expect("parent");
        let hop = caller.next_hop();
        assert_eq!(hop.trace_id(), caller.trace_id());
        assert_ne!(hop.traceparent, caller.traceparent);
        assert!(hop.is_sampled(), "keeps the caller's flags");
        assert!(TraceContext::from_headers(
            |name| (name == TRACEPARENT).then_some(hop.traceparent.as_str())
        )
        .is_some());
    }

    #[test]
    fn an_adopted_span_continues_the_trace_and_hands_it_on() {
        with_otel(|| {
            let parent = TraceContext::from_headers(|name| (name == TRACEPARENT).then_some(PARENT))
                .expect("parent");
            let span = parent.adopt(tracing::info_span!("child"));
            let child = TraceContext::of(&span).expect("child context");
            assert_eq!(child.trace_id(), parent.trace_id());
            assert_ne!(child.traceparent, parent.traceparent, "a new span id");
            assert!(child.is_sampled());
        });
    }

    #[tokio::test]
    async fn without_the_layer_the_scoped_context_is_current() {
        assert_eq!(TraceContext::current(), None, "no span context, no scope");
        let hop = TraceContext::from_headers(|name| (name == TRACEPARENT).then_some(PARENT))
            .expect("parent")
            .next_hop();
        let inside = hop
            .clone()
            .scope(async {
                let _span = tracing::info_span!("orders.place").entered();
                TraceContext::current()
            })
            .await;
        assert_eq!(inside, Some(hop));
        assert_eq!(TraceContext::current(), None, "only inside the scope");
    }

    #[test]
    fn with_the_layer_the_span_context_wins_over_the_scoped_one() {
        let hop = TraceContext::new_unrecorded();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (span, current) = with_otel(|| {
            runtime.block_on(hop.clone().scope(async {
                let span = tracing::info_span!("traced");
                let current = span.in_scope(TraceContext::current);
                (TraceContext::of(&span), current)
            }))
        });
        assert!(span.is_some());
        assert_eq!(current, span);
        assert_ne!(current, Some(hop));
    }

    #[test]
    fn a_root_span_starts_a_trace_and_without_the_layer_there_is_none() {
        let started = with_otel(|| TraceContext::of(&tracing::info_span!("root")));
        assert!(started.is_some_and(|context| context.trace_id().len() == 32));
        assert_eq!(TraceContext::of(&tracing::info_span!("untraced")), None);
    }
}
