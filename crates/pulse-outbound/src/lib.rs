//! Outbound HTTP to URLs a tenant chose, shared by the gateway's `webhook_sink` and the jobs'
//! HTTP handlers so both refuse the same targets, sign the same way and read an answer the same
//! way:
//!
//! * [`guard`]: which addresses may be reached, and a client that cannot be talked into others;
//! * [`signature`]: the `Pulse-Signature` scheme (documented for receivers in `docs/WEBHOOKS.md`);
//! * [`check_url`], [`verdict_of_status`], [`verdict_of_failure`]: a URL checked when it is
//!   configured, and what a status or a failed request means — taken, worth retrying, or refused
//!   for good.

pub mod guard;
pub mod signature;

use std::net::IpAddr;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{StatusCode, Url};

/// Longest URL accepted.
pub const MAX_URL_CHARS: usize = 2_048;
/// Most bytes of a refusing receiver's body kept in the reason; reading stops there, so a huge
/// answer is never buffered.
pub const MAX_REASON_BODY_BYTES: usize = 256;
/// Longest `Retry-After` value quoted in a reason.
const MAX_RETRY_AFTER_CHARS: usize = 64;

/// What an answer (or the lack of one) means for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the receiver took it.
    Taken,
    /// It may pass later: 408, 429, 5xx, a timeout, a connection failure.
    Retry {
        /// Why, for logs and the record.
        reason: String,
    },
    /// It will not pass: any other status, a redirect (not followed), a refused target.
    Refused {
        /// Why.
        reason: String,
    },
}

/// `raw` as an `http://` URL a tenant may configure, or why not. A literal IP host is checked
/// against the outbound policy here, because hyper connects to it without asking the guarded
/// resolver; `purpose` completes "required: the http:// URL …".
pub fn check_url(
    raw: Option<&str>,
    allow_private_targets: bool,
    purpose: &str,
) -> Result<Url, String> {
    let raw = raw.ok_or_else(|| format!("required: the http:// URL {purpose}"))?;
    if raw.len() > MAX_URL_CHARS {
        return Err(format!("longer than {MAX_URL_CHARS} characters"));
    }
    let url = Url::parse(raw).map_err(|err| format!("not a valid URL: {err}"))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(
                "https:// targets need TLS support, which this build does not have yet; \
                 use an http:// URL (see docs/WEBHOOKS.md)"
                    .into(),
            )
        }
        other => return Err(format!("scheme {other:?} is not http")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials (user:password@); put them in headers".into());
    }
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| "has no host".to_owned())?;
    // The URL parser already wrote every IPv4 spelling (`2130706433`, `0x7f.1`) as a dotted
    // quad, and IPv6 in brackets: whatever does not parse here is a name.
    let literal: Option<IpAddr> = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok();
    if let Some(ip) = literal.filter(|_| !allow_private_targets) {
        if let Some(kind) = guard::refusal(ip) {
            return Err(format!(
                "{ip} is {kind}; outbound requests may reach public addresses only"
            ));
        }
    }
    Ok(url)
}

/// What `response`'s status means; for a refusing 4xx, reads at most [`MAX_REASON_BODY_BYTES`] of
/// its body into the reason.
pub async fn verdict_of_response(mut response: reqwest::Response) -> Verdict {
    let status = response.status();
    match verdict_of_status(status, response.headers()) {
        Verdict::Refused { reason } if status.is_client_error() => {
            let mut body = Vec::new();
            // A failure reading the body changes nothing: the status has decided.
            while let Ok(Some(chunk)) = response.chunk().await {
                body.extend_from_slice(&chunk);
                if body.len() >= MAX_REASON_BODY_BYTES {
                    break;
                }
            }
            body.truncate(MAX_REASON_BODY_BYTES);
            let said = printable(&String::from_utf8_lossy(&body));
            Verdict::Refused {
                reason: if said.is_empty() {
                    reason
                } else {
                    format!("{reason}: {said}")
                },
            }
        }
        verdict => verdict,
    }
}

/// 2xx is taken; 408, 429 and 5xx may pass later; anything else (4xx, and 3xx, as redirects are
/// not followed) will not.
pub fn verdict_of_status(status: StatusCode, headers: &HeaderMap) -> Verdict {
    let named = format!(
        "HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned();
    let header = |name: HeaderName| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
            .map(|value| {
                value
                    .chars()
                    .take(MAX_RETRY_AFTER_CHARS)
                    .collect::<String>()
            })
    };
    if status.is_success() {
        Verdict::Taken
    } else if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        Verdict::Retry {
            reason: match header(RETRY_AFTER) {
                Some(after) => format!("{named} (Retry-After: {after})"),
                None => named,
            },
        }
    } else if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        Verdict::Retry { reason: named }
    } else if status.is_redirection() {
        Verdict::Refused {
            reason: match header(LOCATION) {
                Some(location) => format!("{named}: redirects are not followed (to {location})"),
                None => format!("{named}: redirects are not followed"),
            },
        }
    } else {
        Verdict::Refused { reason: named }
    }
}

/// What a request that got no response within `timeout` means, `timeout` being what was left of
/// a `full` one (a batch sharing one deadline).
pub fn verdict_of_failure(err: &reqwest::Error, timeout: Duration, full: Duration) -> Verdict {
    if let Some(refused) = guard::refused_target(err) {
        return Verdict::Refused {
            reason: format!("target refused: {refused}"),
        };
    }
    let cause = printable(&root_cause(err).to_string());
    if err.is_builder() {
        Verdict::Refused {
            reason: format!("request not built: {cause}"),
        }
    } else if err.is_timeout() {
        Verdict::Retry {
            reason: if timeout < full {
                format!(
                    "no response within the {} ms left of the batch's {} ms",
                    timeout.as_millis(),
                    full.as_millis()
                )
            } else {
                format!("no response within {} ms", timeout.as_millis())
            },
        }
    } else if err.is_connect() {
        Verdict::Retry {
            reason: format!("could not connect: {cause}"),
        }
    } else {
        // A connection reset or closed mid-exchange: the receiver may be restarting.
        Verdict::Retry {
            reason: format!("request failed: {cause}"),
        }
    }
}

/// The innermost error: the one that says what went wrong ("Connection refused", "failed to
/// lookup address"), where the outer ones only say where.
fn root_cause<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause
}

/// `text` on one line, without control characters, as a reason is logged and shown.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}
