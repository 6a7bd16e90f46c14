//! The error responses, one component each, all with the house body
//! `{"error":{"code","message"}}` ([`crate::error::ErrorBody`]).

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::ObjectBuilder;
use utoipa::openapi::{Content, Ref, RefOr, Type};
use utoipa::ToResponse;

/// The headers of a 429 (draft-ietf-httpapi-ratelimit-headers, as [`crate::auth`] sends them):
/// name and meaning.
pub const RATE_LIMIT_HEADERS: [(&str, &str); 3] = [
    (
        "Retry-After",
        "Seconds until the quota admits a request again.",
    ),
    (
        "RateLimit-Policy",
        "The quota in force, e.g. `\"api\";q=100;w=1` (100 requests per 1-second window).",
    ),
    (
        "RateLimit",
        "What is left of it, e.g. `\"api\";r=0;t=1` (0 remaining, reset in 1 s).",
    ),
];

fn error_response(description: &str, codes: &str) -> ResponseBuilder {
    ResponseBuilder::new()
        .description(format!("{description} Codes: {codes}."))
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("Error"))),
        )
}

fn header(schema_type: Type, description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(schema_type))
        .description(Some(description))
        .build()
}

macro_rules! error_responses {
    ($($name:ident: $description:literal, $codes:literal;)*) => {$(
        #[doc = $description]
        pub(crate) struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), error_response($description, $codes).build().into())
            }
        }
    )*};
}

error_responses! {
    BadRequest: "The request is malformed: a body that is not the documented JSON object, a \
        parameter out of range, a path identifier outside its charset.", "`invalid_request`";
    Forbidden: "The key is valid but its scope does not open this route (an `ingest` key on a \
        `full` route).", "`forbidden`";
    NotFound: "No such resource.", "`not_found`";
    MethodNotAllowed: "The path exists but not with this method; `Allow` lists those it has.",
        "`method_not_allowed`";
    RequestTimeout: "The request body did not arrive in time; the connection is closed.",
        "`request_timeout`";
    Conflict: "The request conflicts with the current state (a job that already finished).",
        "`conflict`, `quote_used`, `wrong_state`, `invalid_transition`, `not_the_driver`, \
        `no_driver`, `idempotency_key_reused`";
    PaymentRequired: "The rider's wallet cannot cover the fare (`wallet.require_funds` is on): \
        top it up first.", "`insufficient_funds`";
    PayloadTooLarge: "The body exceeds the route's limit (16 KiB on the API).",
        "`payload_too_large`";
    UnsupportedMediaType: "The body is not JSON (`Content-Type: application/json`), or has a \
        `Content-Encoding` the route does not accept.", "`unsupported_media_type`";
    Unprocessable: "Well-formed but not acceptable: a quote that is unknown, expired, for \
        another rider or another trip; an `Idempotency-Key` reused for a different order; a job type \
        with no handler.",
        "`quote_unavailable`, `quote_mismatch`, `quote_not_yours`, `idempotency_key_reused`, \
        `unknown_job_type`";
    Unavailable: "A backend did not answer (or not in time); retrying may help (an order with the \
        same `Idempotency-Key`).", "`unavailable`";
    Internal: "A failure a retry will not cure (a bug on the server's side).", "`internal`";
    AdminUnauthorized: "The admin token is missing or wrong.", "`unauthorized`";
}

/// No valid API key was presented.
pub(crate) struct Unauthorized;

impl<'r> ToResponse<'r> for Unauthorized {
    fn response() -> (&'r str, RefOr<Response>) {
        let response = error_response(
            "No API key was presented, or it is malformed, unknown or revoked.",
            "`unauthorized`",
        )
        .header(
            "WWW-Authenticate",
            header(
                Type::String,
                "The schemes a key may be sent by: `Bearer realm=\"pulse\", Basic realm=\"pulse\"`.",
            ),
        )
        .build();
        ("Unauthorized", response.into())
    }
}

/// The tenant's quota is spent for now.
pub(crate) struct TooManyRequests;

impl<'r> ToResponse<'r> for TooManyRequests {
    fn response() -> (&'r str, RefOr<Response>) {
        let mut response = error_response(
            "The tenant's quota is spent for now; retry after `Retry-After` seconds.",
            "`rate_limited`",
        );
        for (index, (name, description)) in RATE_LIMIT_HEADERS.into_iter().enumerate() {
            let schema_type = if index == 0 {
                Type::Integer
            } else {
                Type::String
            };
            response = response.header(name, header(schema_type, description));
        }
        ("TooManyRequests", response.build().into())
    }
}
