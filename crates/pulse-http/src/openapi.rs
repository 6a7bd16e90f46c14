//! The OpenAPI 3.1 document of the public API (`/api/v1`) and the admin API (`/admin/v1`),
//! generated from the handlers' `#[utoipa::path]` attributes and the bodies' `ToSchema`
//! derives, served without a key at `GET /api/v1/openapi.json` and drawn by the reference page
//! at `/docs` ([`crate::docs_page`]).
//!
//! Invariants: every operation under `/api/v1` but the document itself requires an API key
//! (three ways to present it, one security scheme each) and documents 401, 403, 429 and 503;
//! every operation under `/admin/v1` requires the admin token. Domain types (money, the surge
//! map, tenants and keys) are described here by mirror schemas ([`domain`]), so the domain
//! crates stay free of utoipa; a unit test keeps each mirror's fields equal to what the real type
//! serialises. The committed copy is `docs/openapi.json`, kept equal by
//! `crates/pulse-http/tests/openapi.rs`.

pub(crate) mod domain;
pub(crate) mod responses;

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{SecurityRequirement, Server};
use utoipa::{Modify, OpenApi};

use crate::{ADMIN_PREFIX, API_PREFIX};

pub use responses::RATE_LIMIT_HEADERS;

/// Where the document is served: `/api/v1/openapi.json`, outside the key check.
pub const OPENAPI_JSON_PATH: &str = "/api/v1/openapi.json";

/// The security schemes a key may be presented by on `/api/v1`.
pub const API_KEY_SCHEMES: [&str; 3] = ["api_key", "bearer", "basic"];
/// The security scheme of `/admin/v1`.
pub const ADMIN_SCHEME: &str = "admin_token";

const DESCRIPTION: &str = "\
Pulse prices rides by live demand and supply: drivers report their positions, riders get quotes \
and place orders, and the surge map shows every H3 cell's multiplier as it changes.

**Authentication.** Every `/api/v1` route but this document needs the tenant's API key, sent as \
`X-API-Key: <key>`, `Authorization: Bearer <key>`, or HTTP Basic with the key as the user name \
(any password). The `/admin/v1` routes need the operator's admin token as \
`Authorization: Bearer <token>`.

**Errors** are always JSON: `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`, with a \
stable `code` per case. A method a path does not serve is 405 `method_not_allowed` with an \
`Allow` header; a path Pulse does not serve is 404 `not_found`. A 429 carries `Retry-After`, \
`RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers); a 503 may be \
retried (orders with the same `Idempotency-Key`).

**Money** is integer minor units with an ISO 4217 currency: \
`{\"amount_minor\": 625, \"currency\": \"USD\"}`. Times are RFC 3339 in UTC.";

#[derive(OpenApi)]
#[openapi(
    info(title = "Pulse", description = DESCRIPTION, license(name = "Apache-2.0")),
    paths(
        serve_document,
        crate::api::orders::place,
        crate::api::rides::get,
        crate::api::rides::change_status,
        crate::api::rides::cancel,
        crate::api::rides::dispatch,
        crate::api::rides::trail,
        crate::api::rides::rider_rides,
        crate::api::rides::driver_rides,
        crate::api::rides::nearby,
        crate::api::wallet::top_up,
        crate::api::wallet::rider_wallet,
        crate::api::wallet::rider_entries,
        crate::api::wallet::driver_wallet,
        crate::api::wallet::driver_entries,
        crate::api::wallet::totals,
        crate::api::profiles::create,
        crate::api::profiles::list,
        crate::api::profiles::get_profile,
        crate::api::profiles::by_user,
        crate::api::profiles::by_anonymous,
        crate::api::profiles::events,
        crate::api::profiles::merges,
        crate::api::profiles::unmerge,
        crate::api::drivers::report_location,
        crate::api::drivers::report_locations,
        crate::api::quotes::quote,
        crate::api::surge::cells,
        crate::api::surge::stream,
        crate::admin::list_tenants,
        crate::admin::create_tenant,
        crate::admin::get_tenant,
        crate::admin::set_quota,
        crate::admin::clear_quota,
        crate::admin::list_keys,
        crate::admin::create_key,
        crate::admin::revoke_key,
        crate::admin::get_pipeline,
        crate::admin::put_pipeline,
        crate::admin_profiles::reconcile,
        crate::admin_profiles::rebuild,
        crate::admin_profiles::repairs,
        crate::api::events::send_event,
        crate::api::events::send_events,
        crate::api::events::dead_letters,
        crate::api::events::redrive,
        crate::api::jobs::enqueue,
        crate::api::jobs::enqueue_batch,
        crate::api::jobs::get,
        crate::api::jobs::list,
        crate::api::jobs::dead_letters,
        crate::api::jobs::cancel,
        crate::api::jobs::retry,
        crate::api::jobs::redrive,
        crate::api::jobs::put_handler,
        crate::api::jobs::get_handler,
    ),
    components(
        schemas(crate::error::ErrorBody<'_>, domain::SurgeUpdate, domain::QuotaClass,
            domain::CanonicalEvent, crate::api::events::SegmentSuccess),
        responses(
            responses::BadRequest,
            responses::Unauthorized,
            responses::AdminUnauthorized,
            responses::Forbidden,
            responses::NotFound,
            responses::MethodNotAllowed,
            responses::RequestTimeout,
            responses::Conflict,
            responses::PaymentRequired,
            responses::PayloadTooLarge,
            responses::UnsupportedMediaType,
            responses::Unprocessable,
            responses::TooManyRequests,
            responses::Unavailable,
            responses::Internal,
        )
    ),
    modifiers(&SegmentPaths, &Security),
    tags(
        (name = "orders", description = "Placing orders and running rides: the lifecycle \
            (`PENDING` → `MATCHED` → `STARTED` → `FINISHED`, or `CANCELLED`), dispatch to the \
            nearest available driver, histories, trails and the drivers near a point."),
        (name = "surge", description = "Driver locations, quotes and the live surge map."),
        (name = "wallet", description = "The wallet: riders' top-ups and wallets, drivers' \
            earnings, their entries, and the tenant's ledger totals. A ride's fare is held on the \
            rider's wallet at the match, paid when it finishes, released when it is cancelled."),
        (name = "profiles", description = "Customer profiles: one per customer, built from the \
            identify, track, page, screen, alias and group events the gateway takes in, with \
            their identities resolved and merged by the tenant's rules, every merge explained and \
            undoable, and computed attributes (first seen, last active, page views, event \
            counts, device class, location). Read from the hot copy, the store behind it."),
        (name = "events", description = "The event gateway: events in (the seed's `/v1/events`, \
            and Segment's `/v1/track|identify|page|screen|group|alias|batch` beside it, answered \
            as Segment does), and the tenant's dead letters."),
        (name = "jobs", description = "Background jobs: enqueue (idempotently), read, list, \
            cancel, retry and redrive the tenant's jobs, and register the HTTP handlers that \
            run them."),
        (name = "admin", description = "Tenants, their quotas, their API keys and their event \
            pipelines (the operator's)."),
        (name = "meta", description = "This document."),
    )
)]
struct ApiDoc;

/// The Segment-compatible calls: one route per call type, answered as Segment does, so their
/// operations are written here from one template instead of seven handler annotations.
struct SegmentPaths;

impl Modify for SegmentPaths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder};
        use utoipa::openapi::request_body::RequestBodyBuilder;
        use utoipa::openapi::{Content, Ref, ResponseBuilder, ResponsesBuilder};
        let calls = pulse_gateway::ingress::SegmentCall::ALL
            .iter()
            .map(|call| call.as_str())
            .chain(std::iter::once("batch"));
        for call in calls {
            let (summary, example) = if call == "batch" {
                (
                    "Segment `batch`: many calls, each naming its `type`.".to_owned(),
                    serde_json::json!({"batch": [{"type": "track", "userId": "u_1",
                        "event": "Order Completed", "properties": {"total": 12.5}}]}),
                )
            } else {
                (
                    format!("Segment `{call}`: stored with `event_type` = `{call}`."),
                    serde_json::json!({"userId": "u_1", "messageId": "ajs-1",
                        "timestamp": "2026-12-01T10:00:00Z"}),
                )
            };
            let body = RequestBodyBuilder::new()
                .description(Some(
                    "The Segment message as its libraries send it; the key as HTTP Basic user \
                     name or as `writeKey` in the body; `application/json` or `text/plain`; \
                     gzip accepted.",
                ))
                .content(
                    "application/json",
                    Content::builder()
                        .schema(Some(utoipa::openapi::ObjectBuilder::new()))
                        .example(Some(example))
                        .build(),
                )
                .required(Some(utoipa::openapi::Required::True))
                .build();
            let mut responses = ResponsesBuilder::new().response(
                "200",
                ResponseBuilder::new()
                    .description("Durable on the ingestion log (invalid batch items dropped and counted, as Segment does).")
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("SegmentSuccess"))),
                    ),
            );
            for (status, name) in [
                ("400", "BadRequest"),
                ("401", "Unauthorized"),
                ("403", "Forbidden"),
                ("408", "RequestTimeout"),
                ("413", "PayloadTooLarge"),
                ("415", "UnsupportedMediaType"),
                ("429", "TooManyRequests"),
                ("500", "Internal"),
                ("503", "Unavailable"),
            ] {
                responses = responses.response(status, Ref::from_response_name(name));
            }
            let operation = OperationBuilder::new()
                .operation_id(Some(format!("segment_{call}")))
                .tag("events")
                .summary(Some(summary))
                .request_body(Some(body))
                .responses(responses.build())
                .build();
            openapi.paths.add_path_operation(
                format!("{}/{call}", crate::api::INGRESS_PREFIX),
                vec![HttpMethod::Post],
                operation,
            );
        }
    }
}

/// Adds the security schemes and gives each operation its own: an API key under `/api/v1`
/// (unless the operation says otherwise, as the document itself does), the admin token under
/// `/admin/v1`.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "The tenant's API key (`pk_<id>_<secret>`).",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <API key>`."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "HTTP Basic with the API key as the user name and any password (how \
                         Segment-style libraries send a write key).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <admin token>` (PULSE_ADMIN_TOKEN, or the \
                         admin-token file in the data directory).",
                    ))
                    .build(),
            ),
        );
        let api_key = || {
            API_KEY_SCHEMES
                .iter()
                .map(|scheme| SecurityRequirement::new(*scheme, Vec::<String>::new()))
                .collect::<Vec<_>>()
        };
        let admin = || vec![SecurityRequirement::new(ADMIN_SCHEME, Vec::<String>::new())];
        for (path, item) in openapi.paths.paths.iter_mut() {
            let required = if path.starts_with(&format!("{API_PREFIX}/"))
                || path.starts_with(&format!("{}/", crate::api::INGRESS_PREFIX))
            {
                api_key()
            } else if path.starts_with(&format!("{ADMIN_PREFIX}/")) {
                admin()
            } else {
                continue;
            };
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation.security.get_or_insert_with(|| required.clone());
            }
        }
        openapi.servers = Some(vec![Server::new("/")]);
    }
}

/// The document: OpenAPI 3.1, version [`CARGO_PKG_VERSION`](env!("CARGO_PKG_VERSION")).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document
}

/// The document as pretty JSON with a trailing newline: what `docs/openapi.json` holds.
pub fn openapi_json() -> String {
    let mut json = openapi()
        .to_pretty_json()
        .expect("the document is plain data and serialises");
    json.push('\n');
    json
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "getOpenApi",
    tag = "meta",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API.",
            content_type = "application/json", body = Object),
    )
)]
async fn serve_document() -> impl IntoResponse {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        DOCUMENT.get_or_init(openapi_json).as_str(),
    )
}

/// `GET /api/v1/openapi.json`, to merge outside the key check.
pub(crate) fn routes() -> Router {
    Router::new().route(OPENAPI_JSON_PATH, get(serve_document))
}
