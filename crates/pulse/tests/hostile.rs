//! A hostile client against one embedded Pulse: a table of raw HTTP/1.1 requests (bad bodies,
//! bad paths, wrong methods, stalled uploads) and of connection behaviours (trickled headers,
//! silent and idle connections, more connections than the limit). Every case has a client-side
//! timeout, so a hang fails with its name; every answer is < 500, and every 4xx is the house
//! JSON error shape with `Content-Type: application/json`.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::TestApp;

/// Short server timeouts, so the connection cases run in seconds: a body must arrive within
/// 500 ms, a connection on which nothing moves is closed after 1.5 s, a header block must be
/// complete 3 s after the connection opened or went idle.
const BODY_READ_TIMEOUT_MS: u64 = 500;
const IDLE_TIMEOUT_MS: u64 = 1_500;
const HEADER_READ_TIMEOUT_MS: u64 = 3_000;
const MAX_CONNECTIONS: usize = 8;

/// An order that does not exist (a well-formed id).
const ORDER_PATH: &str = "/api/v1/orders/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

/// Longest any one case may take on the client side.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers every request of the table carries: the one place to add an API key.
/// The admin token the app under test is given.
const ADMIN_TOKEN: &str = "hostile-corpus-admin-token";
const ADMIN: &str = "Bearer hostile-corpus-admin-token";

/// The key of the app under test, sent by every case but the authentication ones.
static API_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn standard_headers() -> Vec<(&'static str, String)> {
    let mut headers = vec![("Host", "pulse.test".to_owned())];
    if let Some(key) = API_KEY.get() {
        headers.push(("X-API-Key", key.clone()));
    }
    headers
}

/// A request presenting `credentials` headers instead of the app's key.
fn request_with_credentials(method: &str, path: &str, credentials: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: pulse.test\r\n");
    for (name, value) in credentials {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    head.into_bytes()
}

/// The bytes of one HTTP/1.1 request, with [`standard_headers`] and `Connection: close`.
fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in standard_headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let declares_length = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !declares_length {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn json_post(path: &str, body: &str) -> Vec<u8> {
    request(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn order(user_id: &str, pickup: &str) -> String {
    format!(r#"{{"user_id":{user_id},"pickup":{pickup},"dropoff":{{"lat":52.5,"lng":13.4}}}}"#)
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

fn parse(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Sends `bytes` on a new connection and reads until the server closes it.
async fn send(addr: &str, bytes: &[u8]) -> Result<Answer, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.write_all(bytes).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        // A reset after the answer (the server closed with our unread bytes) still counts.
        let _ = stream.read_to_end(&mut raw).await;
        parse(&raw).ok_or_else(|| format!("no HTTP answer: {:?}", String::from_utf8_lossy(&raw)))
    };
    tokio::time::timeout(CASE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {CASE_TIMEOUT:?}"))?
}

/// What every answer must be: below 500, and a 4xx is the house JSON error.
fn check_shape(answer: &Answer) -> Result<(), String> {
    if answer.status >= 500 {
        return Err(format!("server error {}: {}", answer.status, answer.body));
    }
    if answer.status >= 400 {
        if answer.header("content-type") != Some("application/json") {
            return Err(format!(
                "{} with Content-Type {:?}",
                answer.status,
                answer.header("content-type")
            ));
        }
        let body: Value = serde_json::from_str(&answer.body)
            .map_err(|_| format!("not JSON: {:?}", answer.body))?;
        let shaped = body["error"]["code"].is_string() && body["error"]["message"].is_string();
        if !shaped {
            return Err(format!("not the house error shape: {body}"));
        }
    }
    if answer.status == 405 && answer.header("allow").is_none() {
        return Err("405 without an Allow header".to_owned());
    }
    Ok(())
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
    /// The JSON error code (for a 4xx).
    code: Option<&'static str>,
    /// Part of the message.
    says: Option<&'static str>,
}

fn case(name: &'static str, bytes: Vec<u8>, status: u16, code: Option<&'static str>) -> Case {
    Case {
        name,
        bytes,
        status,
        code,
        says: None,
    }
}

fn cases() -> Vec<Case> {
    let good_pickup = r#"{"lat":52.52,"lng":13.405}"#;
    let ok_order = order(r#""rider-1""#, good_pickup);
    let ping = r#"{"lat":52.52,"lng":13.405,"available":true}"#;
    let bad = Some("invalid_request");
    let wrong_method = Some("method_not_allowed");
    let unauthorized = Some("unauthorized");
    let fake_key = format!("pk_aaaaaaaaaaaa_{}", "0".repeat(40));
    let mut cases = vec![
        // Authentication: no key, a malformed one, an unknown one, a wrong admin token.
        case(
            "no API key",
            request_with_credentials("GET", "/api/v1/quote?lat=1&lng=2", &[]),
            401,
            unauthorized,
        ),
        case(
            "a malformed API key",
            request_with_credentials(
                "GET",
                "/api/v1/quote?lat=1&lng=2",
                &[("X-API-Key", "pk_short")],
            ),
            401,
            unauthorized,
        ),
        case(
            "an unknown API key as Bearer",
            request_with_credentials(
                "GET",
                "/api/v1/orders/0190f6b2-0000-7000-8000-000000000000",
                &[("Authorization", format!("Bearer {fake_key}").leak())],
            ),
            401,
            unauthorized,
        ),
        case(
            "an admin route without the admin token",
            request_with_credentials("GET", "/admin/v1/tenants", &[]),
            401,
            unauthorized,
        ),
        case(
            "an admin route with an API key instead of the admin token",
            request_with_credentials(
                "GET",
                "/admin/v1/tenants",
                &[("Authorization", format!("Bearer {fake_key}").leak())],
            ),
            401,
            unauthorized,
        ),
        // The admin routes, with the admin token: the same JSON answers.
        case(
            "the admin tenant list",
            request_with_credentials("GET", "/admin/v1/tenants", &[("Authorization", ADMIN)]),
            200,
            None,
        ),
        case(
            "an admin path that is not UTF-8",
            request_with_credentials("GET", "/admin/v1/tenants/%FF", &[("Authorization", ADMIN)]),
            400,
            bad,
        ),
        case(
            "an admin path with ..",
            request_with_credentials(
                "GET",
                "/admin/v1/tenants/..%2F..",
                &[("Authorization", ADMIN)],
            ),
            400,
            bad,
        ),
        case(
            "an unknown tenant",
            request_with_credentials(
                "GET",
                "/admin/v1/tenants/nobody",
                &[("Authorization", ADMIN)],
            ),
            404,
            Some("not_found"),
        ),
        case(
            "a wrong method on an admin route",
            request_with_credentials("DELETE", "/admin/v1/tenants", &[("Authorization", ADMIN)]),
            405,
            wrong_method,
        ),
        case(
            "an array where the admin API expects an object",
            request(
                "POST",
                "/admin/v1/tenants",
                &[
                    ("Authorization", ADMIN),
                    ("Content-Type", "application/json"),
                ],
                br#"["acme", 5]"#,
            ),
            400,
            bad,
        ),
        case(
            "a reserved tenant id",
            request(
                "POST",
                "/admin/v1/tenants",
                &[
                    ("Authorization", ADMIN),
                    ("Content-Type", "application/json"),
                ],
                br#"{"tenant_id":"default"}"#,
            ),
            409,
            Some("conflict"),
        ),
        case(
            "an invalid tenant id",
            request(
                "POST",
                "/admin/v1/tenants",
                &[
                    ("Authorization", ADMIN),
                    ("Content-Type", "application/json"),
                ],
                "{\"tenant_id\":\"Acme\u{202e}\"}".as_bytes(),
            ),
            400,
            bad,
        ),
        // Controls: the same app answers good requests.
        case(
            "a good order",
            json_post("/api/v1/orders", &ok_order),
            201,
            None,
        ),
        case(
            "a good driver ping",
            json_post("/api/v1/drivers/driver-7/location", ping),
            202,
            None,
        ),
        case(
            "an unknown route",
            request("GET", "/api/v1/nothing", &[], b""),
            404,
            Some("not_found"),
        ),
        // 1. A body that stalls.
        case(
            "a body shorter than its Content-Length",
            request(
                "POST",
                "/api/v1/orders",
                &[
                    ("Content-Type", "application/json"),
                    ("Content-Length", "400"),
                ],
                br#"{"user_id":"#,
            ),
            408,
            Some("request_timeout"),
        ),
        // 4. Sizes and encodings.
        case(
            "a body declared over the outer limit",
            request(
                "POST",
                "/api/v1/orders",
                &[
                    ("Content-Type", "application/json"),
                    ("Content-Length", "2000000"),
                ],
                b"",
            ),
            413,
            Some("payload_too_large"),
        ),
        case(
            "a body over the API limit",
            json_post(
                "/api/v1/orders",
                &order(&format!("\"{}\"", "u".repeat(20_000)), good_pickup),
            ),
            413,
            Some("payload_too_large"),
        ),
        case(
            "a gzip body where none is accepted",
            request(
                "POST",
                "/api/v1/orders",
                &[
                    ("Content-Type", "application/json"),
                    ("Content-Encoding", "gzip"),
                ],
                b"\x1f\x8b\x08\x00",
            ),
            415,
            Some("unsupported_encoding"),
        ),
        // 5. Structs are objects.
        Case {
            says: Some("pickup: expected an object"),
            ..case(
                "a struct given as an array",
                json_post("/api/v1/orders", &order(r#""rider-1""#, "[13.405, 52.52]")),
                400,
                bad,
            )
        },
        // Bodies.
        case(
            "bad JSON",
            json_post("/api/v1/orders", r#"{"user_id":"#),
            400,
            bad,
        ),
        case(
            "deep nesting",
            json_post(
                "/api/v1/orders",
                &order(
                    &format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)),
                    good_pickup,
                ),
            ),
            400,
            bad,
        ),
        case(
            "deep nesting of an unknown field",
            json_post(
                "/api/v1/orders",
                &format!(r#"{{"x":{}1{}}}"#, "[".repeat(5_000), "]".repeat(5_000)),
            ),
            400,
            bad,
        ),
        case(
            "a huge number",
            json_post(
                "/api/v1/orders",
                &order(r#""rider-1""#, r#"{"lat":1e400,"lng":1}"#),
            ),
            400,
            bad,
        ),
        case(
            "a huge integer",
            json_post(
                "/api/v1/orders",
                &order(
                    r#""rider-1""#,
                    &format!(r#"{{"lat":{},"lng":1}}"#, "9".repeat(400)),
                ),
            ),
            400,
            bad,
        ),
        case(
            "NaN as a string",
            json_post(
                "/api/v1/orders",
                &order(r#""rider-1""#, r#"{"lat":"NaN","lng":1}"#),
            ),
            400,
            bad,
        ),
        case(
            "bare NaN",
            json_post(
                "/api/v1/orders",
                &order(r#""rider-1""#, r#"{"lat":NaN,"lng":1}"#),
            ),
            400,
            bad,
        ),
        case(
            "Infinity as a string in a ping",
            json_post(
                "/api/v1/drivers/d-1/location",
                r#"{"lat":"Infinity","lng":1,"available":true}"#,
            ),
            400,
            bad,
        ),
        case(
            "a latitude out of range",
            json_post(
                "/api/v1/orders",
                &order(r#""rider-1""#, r#"{"lat":91,"lng":1}"#),
            ),
            400,
            bad,
        ),
        case(
            "a longitude out of range in a ping",
            json_post(
                "/api/v1/drivers/d-1/location",
                r#"{"lat":1,"lng":-180.5,"available":true}"#,
            ),
            400,
            bad,
        ),
        case(
            "a quote out of range",
            request("GET", "/api/v1/quote?lat=91&lng=0", &[], b""),
            400,
            bad,
        ),
        case(
            "an unknown field",
            json_post(
                "/api/v1/orders",
                &order(r#""rider-1""#, r#"{"lat":1,"lng":1,"alt":3}"#),
            ),
            400,
            bad,
        ),
        case(
            "a wrong content type",
            request(
                "POST",
                "/api/v1/orders",
                &[("Content-Type", "text/plain")],
                ok_order.as_bytes(),
            ),
            415,
            Some("unsupported_media_type"),
        ),
        case(
            "no content type",
            request("POST", "/api/v1/orders", &[], ok_order.as_bytes()),
            415,
            Some("unsupported_media_type"),
        ),
        case("an empty body", json_post("/api/v1/orders", ""), 400, bad),
        case(
            "duplicate keys",
            json_post(
                "/api/v1/orders",
                &format!(r#"{{"user_id":"a","user_id":"b",{}"#, &ok_order[1..]),
            ),
            400,
            bad,
        ),
        case(
            "an overlong user_id",
            json_post(
                "/api/v1/orders",
                &order(&format!("\"{}\"", "u".repeat(51)), good_pickup),
            ),
            400,
            bad,
        ),
        case(
            "a bidi override in user_id",
            json_post("/api/v1/orders", &order("\"rider\u{202E}1\"", good_pickup)),
            400,
            bad,
        ),
        case(
            "an escaped bidi isolate in user_id",
            json_post("/api/v1/orders", &order(r#""rider\u2066x""#, good_pickup)),
            400,
            bad,
        ),
        // 3 and 7. Path identifiers.
        case(
            "invalid UTF-8 in an order id",
            request("GET", "/api/v1/orders/%FF", &[], b""),
            400,
            bad,
        ),
        case(
            "invalid UTF-8 in a driver id",
            json_post("/api/v1/drivers/%FF%FE/location", ping),
            400,
            bad,
        ),
        case(
            "`..` as a driver id",
            json_post("/api/v1/drivers/../location", ping),
            400,
            bad,
        ),
        case(
            "`%2e%2e` as a driver id",
            json_post("/api/v1/drivers/%2e%2e/location", ping),
            400,
            bad,
        ),
        case(
            "`%00` in a driver id",
            json_post("/api/v1/drivers/d%00/location", ping),
            400,
            bad,
        ),
        case(
            "a bidi override in a driver id",
            json_post("/api/v1/drivers/d%E2%80%AE1/location", ping),
            400,
            bad,
        ),
        case(
            "an overlong driver id",
            json_post(
                &format!("/api/v1/drivers/{}/location", "d".repeat(65)),
                ping,
            ),
            400,
            bad,
        ),
        case(
            "`..` as an order id",
            request("GET", "/api/v1/orders/..", &[], b""),
            400,
            bad,
        ),
        case(
            "`%00` in an order id",
            request("GET", "/api/v1/orders/%00", &[], b""),
            400,
            bad,
        ),
    ];
    // The event gateway's doors.
    let big_event = format!(
        r#"{{"event_type":"big","blob":"{}"}}"#,
        "x".repeat(33 * 1024)
    );
    let many_events = format!(
        r#"{{"events":[{}]}}"#,
        vec![r#"{"event_type":"x"}"#; 2_001].join(",")
    );
    let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
    cases.extend([
        case("an event without a key", request_with_credentials("POST", "/v1/events", &[]), 401, unauthorized),
        case("an event that is not JSON", json_post("/v1/events", "{event_type: x}"), 400, bad),
        case("an event that is an array", json_post("/v1/events", r#"[{"event_type":"x"}]"#), 400, bad),
        case("an event nested 5000 deep", json_post("/v1/events", &deep), 400, bad),
        case("an event without event_type", json_post("/v1/events", r#"{"user_id":"u"}"#), 400, Some("invalid_event")),
        case("an event_type with a NUL", json_post("/v1/events", r#"{"event_type":"a\u0000b"}"#), 400, Some("invalid_event_type")),
        case("an event_type that is a number", json_post("/v1/events", r#"{"event_type":7}"#), 400, Some("invalid_event")),
        case("an event naming another tenant", json_post("/v1/events", r#"{"event_type":"x","tenant_id":"other"}"#), 400, Some("field_reserved")),
        case("an event_id with a space", json_post("/v1/events", r#"{"event_type":"x","event_id":"a b"}"#), 400, Some("invalid_event_id")),
        case("an event a century ahead", json_post("/v1/events", r#"{"event_type":"x","timestamp":"2126-01-01T00:00:00Z"}"#), 400, Some("timestamp_out_of_range")),
        case("an event with a timestamp that is no time", json_post("/v1/events", r#"{"event_type":"x","timestamp":"soon"}"#), 400, Some("invalid_event")),
        case("an event over 32 KB", json_post("/v1/events", &big_event), 413, Some("event_too_large")),
        case("an event as form data", request("POST", "/v1/events", &[("Content-Type", "application/x-www-form-urlencoded")], b"event_type=x"), 415, Some("unsupported_media_type")),
        case("a batch without events", json_post("/v1/events/batch", r#"{"events":[]}"#), 400, Some("invalid_event")),
        case("a batch that is an object of objects", json_post("/v1/events/batch", r#"{"events":{"a":{}}}"#), 400, bad),
        case("a batch of 2001 events", json_post("/v1/events/batch", &many_events), 400, Some("too_many_events")),
        case("a batch over 500 KB", json_post("/v1/events/batch", &format!(r#"{{"events":[{big_event},{big_event},{big_event},{big_event},{big_event},{big_event},{big_event},{big_event},{big_event},{big_event},{big_event},{big_event},{big_event},{big_event},{big_event},{big_event}]}}"#)), 413, Some("payload_too_large")),
        case("a gzip event that is not gzip", request("POST", "/v1/events", &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")], b"not gzip at all"), 400, bad),
        case("a Segment call without a key", request_with_credentials("POST", "/v1/track", &[]), 401, unauthorized),
        case("a Segment track without an event", json_post("/v1/track", r#"{"userId":"u"}"#), 400, Some("invalid_event")),
        case("a Segment call without a user", json_post("/v1/identify", r#"{"traits":{}}"#), 400, Some("invalid_event")),
        case("a Segment batch that is no list", json_post("/v1/batch", r#"{"batch":{}}"#), 400, bad),
        case("a Segment call with a wrong writeKey", request("POST", "/v1/page", &[("Content-Type", "text/plain")], format!(r#"{{"writeKey":"{fake_key}","anonymousId":"a"}}"#).as_bytes()), 200, None),
        case("dead letters with a bad time", request("GET", "/api/v1/events/dead-letters?from=yesterday", &[], b""), 400, bad),
        case("dead letters with a page of 0", request("GET", "/api/v1/events/dead-letters?limit=0", &[], b""), 400, bad),
        case("dead letters with an unknown filter", request("GET", "/api/v1/events/dead-letters?tenant=other", &[], b""), 400, bad),
    ]);
    // The profiles' doors.
    let overlong_user = "u".repeat(300);
    cases.extend([
        case(
            "a profile id that is no UUID",
            request("GET", "/api/v1/profiles/not-a-uuid", &[], b""),
            400,
            bad,
        ),
        case(
            "`..` as a profile id",
            request("GET", "/api/v1/profiles/..", &[], b""),
            400,
            bad,
        ),
        case(
            "a profile's events with a page of 0",
            request(
                "GET",
                "/api/v1/profiles/00000000-0000-0000-0000-000000000000/events?limit=0",
                &[],
                b"",
            ),
            400,
            bad,
        ),
        case(
            "a profile's events after garbage",
            request(
                "GET",
                "/api/v1/profiles/00000000-0000-0000-0000-000000000000/events?after=zzz",
                &[],
                b"",
            ),
            400,
            bad,
        ),
        case(
            "`%00` in a user id",
            request("GET", "/api/v1/profiles/by-user/u%00", &[], b""),
            400,
            bad,
        ),
        case(
            "invalid UTF-8 in an anonymous id",
            request("GET", "/api/v1/profiles/by-anonymous/%FF%FE", &[], b""),
            400,
            bad,
        ),
        case(
            "an overlong user id",
            request(
                "GET",
                &format!("/api/v1/profiles/by-user/{overlong_user}"),
                &[],
                b"",
            ),
            400,
            bad,
        ),
        case(
            "profiles with a page of 0",
            request("GET", "/api/v1/profiles?limit=0", &[], b""),
            400,
            bad,
        ),
        case(
            "profiles with a page of a million",
            request("GET", "/api/v1/profiles?limit=1000000", &[], b""),
            400,
            bad,
        ),
        case(
            "profiles by two traits",
            request("GET", "/api/v1/profiles?trait.a=1&trait.b=2", &[], b""),
            400,
            bad,
        ),
        case(
            "profiles by an unknown parameter",
            request("GET", "/api/v1/profiles?tenant=other", &[], b""),
            400,
            bad,
        ),
        case(
            "a profile that is not JSON",
            json_post("/api/v1/profiles", "{traits:"),
            400,
            bad,
        ),
        case(
            "a profile with traits that are a list",
            json_post("/api/v1/profiles", r#"{"user_id":"u-1","traits":[1]}"#),
            400,
            bad,
        ),
        case(
            "a profile with a control character in its key",
            json_post(
                "/api/v1/profiles",
                "{\"user_id\":\"u-1\",\"idempotency_key\":\"a\\u0007b\"}",
            ),
            400,
            bad,
        ),
        case(
            "an unmerge that is not JSON",
            json_post(
                "/api/v1/profiles/00000000-0000-0000-0000-000000000000/unmerge",
                "[[",
            ),
            400,
            bad,
        ),
    ]);
    // 2. Every wrong method on every route.
    let routes: [(&str, &[&str]); 18] = [
        ("/v1/events", &["GET", "PUT", "DELETE"]),
        ("/v1/track", &["GET", "DELETE"]),
        ("/api/v1/events/dead-letters", &["POST", "DELETE"]),
        ("/api/v1/orders", &["GET", "PUT", "DELETE", "PATCH"]),
        (ORDER_PATH, &["POST", "PUT", "DELETE"]),
        ("/api/v1/drivers/d-1/location", &["GET", "PUT", "DELETE"]),
        ("/api/v1/quote", &["POST", "DELETE"]),
        ("/api/v1/surge/cells", &["POST", "PUT"]),
        ("/api/v1/surge/stream", &["POST", "DELETE"]),
        ("/api/v1/profiles", &["PUT", "DELETE"]),
        (
            "/api/v1/profiles/00000000-0000-0000-0000-000000000000/unmerge",
            &["GET", "PUT"],
        ),
        ("/healthz", &["POST", "DELETE"]),
        ("/readyz", &["POST"]),
        ("/metrics", &["POST", "PUT"]),
        ("/", &["POST", "DELETE"]),
        ("/map", &["POST"]),
        ("/map/map.js", &["PUT"]),
        ("/map/map.css", &["DELETE"]),
    ];
    for (path, methods) in routes {
        for method in methods {
            cases.push(case(
                "a wrong method",
                request(method, path, &[], b""),
                405,
                wrong_method,
            ));
        }
    }
    cases
}

async fn run_case(addr: &str, case: &Case) -> Result<(), String> {
    let answer = send(addr, &case.bytes).await?;
    check_shape(&answer)?;
    if answer.status != case.status {
        return Err(format!(
            "status {} (want {}): {}",
            answer.status, case.status, answer.body
        ));
    }
    if let Some(code) = case.code {
        let body: Value = serde_json::from_str(&answer.body).unwrap_or_default();
        if body["error"]["code"] != code {
            return Err(format!("code {} (want {code})", body["error"]["code"]));
        }
    }
    if let Some(says) = case.says {
        if !answer.body.contains(says) {
            return Err(format!("message does not say {says:?}: {}", answer.body));
        }
    }
    Ok(())
}

/// Waits for the server to close `stream`, returning how long that took; fails past `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // Whatever the server says before closing must be well formed.
                Ok(n) => {
                    if let Some(answer) = parse(&buf[..n]) {
                        if let Err(err) = check_shape(&answer) {
                            panic!("answer before closing: {err}");
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .map_err(|_| format!("still open after {within:?}"))?;
    Ok(started.elapsed())
}

/// Sends one keep-alive request on `stream` and reads its whole answer (by Content-Length).
async fn keep_alive_request(stream: &mut TcpStream, path: &str) -> Result<Answer, String> {
    let mut head = format!("GET {path} HTTP/1.1\r\n");
    for (name, value) in standard_headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let exchange = async {
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before the answer".to_owned());
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(answer) = parse(&raw) {
                let length: usize = answer
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if answer.body.len() >= length {
                    return Ok(answer);
                }
            }
        }
    };
    tokio::time::timeout(CASE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {CASE_TIMEOUT:?}"))?
}

async fn connect(addr: &str) -> TcpStream {
    TcpStream::connect(addr).await.expect("connects")
}

/// Timeouts: a header trickled a byte at a time, slower than the header-read timeout allows,
/// is cut off by it (not by the idle timeout: bytes keep moving).
async fn trickled_headers_are_cut_off(addr: &str) -> Result<(), String> {
    let mut stream = connect(addr).await;
    let started = Instant::now();
    let header = b"GET /healthz HTTP/1.1\r\nHost: pulse.test\r\nX-Slow: ".to_vec();
    let trickle = async {
        for byte in header.iter().chain(std::iter::repeat(&b'a')) {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let limit = Duration::from_millis(HEADER_READ_TIMEOUT_MS) + Duration::from_secs(3);
    if tokio::time::timeout(limit, trickle).await.is_err() {
        return Err(format!("the trickle was still accepted after {limit:?}"));
    }
    let elapsed = started.elapsed();
    if elapsed < Duration::from_millis(HEADER_READ_TIMEOUT_MS * 8 / 10) {
        return Err(format!(
            "closed after {elapsed:?}, before the header-read timeout"
        ));
    }
    Ok(())
}

/// Timeouts: a connection that sends nothing is closed.
async fn silent_connections_are_closed(addr: &str) -> Result<(), String> {
    let mut stream = connect(addr).await;
    closed_within(
        &mut stream,
        Duration::from_millis(HEADER_READ_TIMEOUT_MS * 2),
    )
    .await?;
    Ok(())
}

/// Timeouts: a keep-alive connection idle after its answer is closed after the idle timeout,
/// before the (longer) header-read timeout would.
async fn idle_keep_alive_connections_are_closed(addr: &str) -> Result<(), String> {
    let mut stream = connect(addr).await;
    let answer = keep_alive_request(&mut stream, "/healthz").await?;
    check_shape(&answer)?;
    let elapsed = closed_within(&mut stream, Duration::from_millis(HEADER_READ_TIMEOUT_MS)).await?;
    if elapsed < Duration::from_millis(IDLE_TIMEOUT_MS * 8 / 10) {
        return Err(format!("closed after {elapsed:?}, before the idle timeout"));
    }
    Ok(())
}

/// The connection limit: past it a client waits (it is not accepted) until a slot frees, then
/// is served; it is never answered with an error.
async fn connections_over_the_limit_wait_for_a_slot(addr: &str) -> Result<(), String> {
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut stream = connect(addr).await;
        // Answered: this connection holds a slot now.
        let answer = keep_alive_request(&mut stream, "/healthz").await?;
        check_shape(&answer)?;
        held.push(stream);
    }
    let started = Instant::now();
    let answer = send(addr, &request("GET", "/healthz", &[], b"")).await?;
    let waited = started.elapsed();
    check_shape(&answer)?;
    if answer.status != 200 {
        return Err(format!("status {} past the limit", answer.status));
    }
    // The held connections go idle and are closed after IDLE_TIMEOUT_MS; only then is a slot
    // free. Without a limit the answer would come at once.
    if waited < Duration::from_millis(IDLE_TIMEOUT_MS / 2) {
        return Err(format!("answered after {waited:?}: the limit did not hold"));
    }
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_gets_json_4xx_answers_and_cannot_hold_connections() {
    let app = TestApp::spawn(|config| {
        config.http.body_read_timeout_ms = BODY_READ_TIMEOUT_MS;
        config.http.idle_timeout_ms = IDLE_TIMEOUT_MS;
        config.http.header_read_timeout_ms = HEADER_READ_TIMEOUT_MS;
        config.http.max_connections = MAX_CONNECTIONS;
        config.admin_token = Some(pulse::config::Secret(ADMIN_TOKEN.to_owned()));
    })
    .await;
    API_KEY.set(app.api_key.clone()).expect("one app per run");
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut failures = Vec::new();
    for case in cases() {
        if let Err(err) = run_case(&addr, &case).await {
            let first_line = String::from_utf8_lossy(&case.bytes)
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(120)
                .collect::<String>();
            failures.push(format!("{} ({first_line}): {err}", case.name));
        }
    }
    let connection_cases = [
        (
            "trickled headers",
            trickled_headers_are_cut_off(&addr).await,
        ),
        (
            "a silent connection",
            silent_connections_are_closed(&addr).await,
        ),
        (
            "an idle keep-alive connection",
            idle_keep_alive_connections_are_closed(&addr).await,
        ),
        (
            "over the connection limit",
            connections_over_the_limit_wait_for_a_slot(&addr).await,
        ),
    ];
    for (name, outcome) in connection_cases {
        if let Err(err) = outcome {
            failures.push(format!("{name}: {err}"));
        }
    }
    // A stalled upload is the client's fault: no 503 was counted against a backend.
    let (_, metrics) = app.get("/metrics").await;
    let server_errors: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("pulse_http_requests_total") && line.contains("status=\"5"))
        .collect();
    if !server_errors.is_empty() {
        failures.push(format!("5xx answers were counted: {server_errors:?}"));
    }
    app.stop().await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
