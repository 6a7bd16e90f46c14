//! The profiles' routes (seed 001's profile service): a profile by id or by one of its
//! identifiers (answered from the hot copy, from the store when the cache misses or is down),
//! created from traits, listed by trait, its events, its merges and the unmerge.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pulse_core::PortError;
use pulse_profiles::model::{Identifier, IdentityKind, Merge, ProfileView};
use pulse_profiles::ports::TraitFilter;
use pulse_profiles::service::{NewProfile, Read};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{rfc3339, ApiJson, ProfilesApi};
use crate::auth::Caller;
use crate::openapi::domain;
use crate::openapi::responses::*;
use crate::ApiError;

/// Where a profile read came from: `hot` (the cache) or `cold` (the store).
pub const READ_SOURCE_HEADER: &str = "pulse-read-source";
/// Most profiles or events in one page.
pub(crate) const MAX_PAGE: usize = 200;
/// Longest trait name a list filters by.
const MAX_TRAIT_KEY: usize = 128;

fn port_error(err: PortError) -> ApiError {
    match err {
        PortError::NotFound(message) => ApiError::not_found(message),
        PortError::Invalid(message) => ApiError::bad_request(message),
        err if err.is_retryable() => {
            tracing::warn!(error = %err, "profiles backend unavailable");
            ApiError::unavailable("profiles are temporarily unavailable; retry")
        }
        err => {
            tracing::error!(error = %err, "profiles backend failed");
            ApiError::internal("profiles could not be read or written; this is a bug on our side")
        }
    }
}

fn profile_id_of(id: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(raw) = id.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    Uuid::parse_str(&raw).map_err(|_| ApiError::bad_request("profile_id must be a UUID"))
}

/// The identifier a lookup names, read by the tenant's own rules (as its events are), so
/// every identifier a profile holds can be looked up and nothing else is.
fn identifier_of(
    state: &ProfilesApi,
    caller: &pulse_tenants::Principal,
    kind: IdentityKind,
    value: Result<Path<String>, PathRejection>,
) -> Result<Identifier, ApiError> {
    let Path(value) = value.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let rules = state
        .profiles
        .engine()
        .settings()
        .identity_for(&caller.tenant);
    let accepted = rules
        .accept(kind, Some(&Value::String(value)))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{} is no identifier here: empty, blocked, longer than {} bytes or with \
                 control characters",
                kind.as_str(),
                rules.max_identifier_bytes
            ))
        })?;
    Ok(Identifier::new(kind, accepted))
}

fn answer(read: Read) -> Response {
    let mut response = Json(read.view).into_response();
    response.headers_mut().insert(
        HeaderName::from_static(READ_SOURCE_HEADER),
        HeaderValue::from_static(read.source),
    );
    response
}

fn not_found(what: impl std::fmt::Display) -> ApiError {
    ApiError::not_found(format!("no profile {what}"))
}

/// A profile by its id (a merged profile's id answers with the profile it joined).
#[utoipa::path(
    get,
    path = "/api/v1/profiles/{profile_id}",
    operation_id = "getProfile",
    tag = "profiles",
    params(("profile_id" = Uuid, Path, description = "The profile's id.")),
    responses(
        (status = 200, description = "The profile; the `Pulse-Read-Source` header says `hot` or `cold`.", body = domain::Profile),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn get_profile(
    State(state): State<Arc<ProfilesApi>>,
    Caller(caller): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = profile_id_of(id)?;
    let read = state
        .profiles
        .get(&caller.tenant, id)
        .await
        .map_err(port_error)?
        .ok_or_else(|| not_found(id))?;
    Ok(answer(read))
}

async fn by_identifier(
    state: &ProfilesApi,
    caller: &pulse_tenants::Principal,
    identifier: Identifier,
) -> Result<Response, ApiError> {
    let read = state
        .profiles
        .by_identifier(&caller.tenant, &identifier)
        .await
        .map_err(port_error)?
        .ok_or_else(|| {
            not_found(format!(
                "holds {} {:?}",
                identifier.kind.as_str(),
                identifier.value
            ))
        })?;
    Ok(answer(read))
}

/// The profile holding a user id.
#[utoipa::path(
    get,
    path = "/api/v1/profiles/by-user/{user_id}",
    operation_id = "getProfileByUserId",
    tag = "profiles",
    params(("user_id" = String, Path, min_length = 1, max_length = 256,
        description = "Segment's `userId` (percent-encoded; at most the tenant's `max_identifier_bytes`, 256 by default).")),
    responses(
        (status = 200, description = "The profile.", body = domain::Profile),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn by_user(
    State(state): State<Arc<ProfilesApi>>,
    Caller(caller): Caller,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    by_identifier(
        &state,
        &caller,
        identifier_of(&state, &caller, IdentityKind::UserId, user_id)?,
    )
    .await
}

/// The profile holding an anonymous id.
#[utoipa::path(
    get,
    path = "/api/v1/profiles/by-anonymous/{anonymous_id}",
    operation_id = "getProfileByAnonymousId",
    tag = "profiles",
    params(("anonymous_id" = String, Path, min_length = 1, max_length = 256,
        description = "Segment's `anonymousId` (percent-encoded; at most the tenant's `max_identifier_bytes`, 256 by default).")),
    responses(
        (status = 200, description = "The profile.", body = domain::Profile),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn by_anonymous(
    State(state): State<Arc<ProfilesApi>>,
    Caller(caller): Caller,
    anonymous_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    by_identifier(
        &state,
        &caller,
        identifier_of(&state, &caller, IdentityKind::AnonymousId, anonymous_id)?,
    )
    .await
}

/// A profile to create: an identify made on the caller's behalf (archived and applied like any
/// other, so a rebuild recreates it).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewProfile)]
pub(crate) struct NewProfileBody {
    /// Segment's `userId`.
    #[schema(min_length = 1, max_length = 256, example = "user-42")]
    user_id: Option<String>,
    /// Segment's `anonymousId`.
    #[schema(min_length = 1, max_length = 256)]
    anonymous_id: Option<String>,
    /// Traits; `email` is an identifier too (unless the tenant says otherwise).
    #[schema(value_type = Object, example = json!({"plan": "pro", "email": "ann@example.com"}))]
    #[serde(default)]
    traits: Map<String, Value>,
    /// The same key names the same identify: a retry answers 200 and changes nothing.
    #[schema(min_length = 1, max_length = 128)]
    idempotency_key: Option<String>,
}

/// Create a profile from traits (or add them to the profile its identifiers name).
#[utoipa::path(
    post,
    path = "/api/v1/profiles",
    operation_id = "createProfile",
    tag = "profiles",
    request_body(content = NewProfileBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = domain::Profile),
        (status = 200, description = "Its identifiers named a profile already (or a retry with the same key): that profile, with the traits applied.", body = domain::Profile),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn create(
    State(state): State<Arc<ProfilesApi>>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<NewProfileBody>,
) -> Result<(StatusCode, Json<ProfileView>), ApiError> {
    if let Some(key) = &body.idempotency_key {
        if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "idempotency_key must be 1 to 128 printable characters",
            ));
        }
    }
    let created = state
        .profiles
        .create(
            &caller.tenant,
            NewProfile {
                user_id: body.user_id,
                anonymous_id: body.anonymous_id,
                traits: body.traits,
                idempotency_key: body.idempotency_key,
            },
        )
        .await
        .map_err(port_error)?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(created.view)))
}

/// A page of profiles.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProfilePage)]
pub(crate) struct ProfilePageBody {
    #[schema(value_type = Vec<domain::Profile>)]
    profiles: Vec<ProfileView>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<Uuid>,
}

/// Which profiles (`trait.<name>=<value>` filters by one trait, compared as text).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct ListQuery {
    /// The `next` of the previous page.
    after: Option<Uuid>,
    /// At most this many (1 to 200, default 50).
    limit: Option<usize>,
    /// `trait.plan=pro`: only profiles whose trait `plan` is `pro` (numbers and booleans as
    /// their JSON text: `trait.seats=3`, `trait.beta=true`). One trait per request.
    #[param(rename = "trait.{name}")]
    trait_filter: Option<String>,
}

/// The tenant's profiles, in id order, optionally by one trait.
#[utoipa::path(
    get,
    path = "/api/v1/profiles",
    operation_id = "listProfiles",
    tag = "profiles",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of profiles.", body = ProfilePageBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn list(
    State(state): State<Arc<ProfilesApi>>,
    Caller(caller): Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ProfilePageBody>, ApiError> {
    let Query(params) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let mut after = None;
    let mut limit = 50;
    let mut filter = None;
    for (name, value) in params {
        match name.as_str() {
            "after" => {
                after = Some(
                    Uuid::parse_str(&value)
                        .map_err(|_| ApiError::bad_request("after must be a profile id"))?,
                );
            }
            "limit" => limit = page_limit(&value)?,
            _ => match name.strip_prefix("trait.") {
                Some(key) if filter.is_none() => {
                    let valid = !key.is_empty()
                        && key.len() <= MAX_TRAIT_KEY
                        && key
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                    if !valid {
                        return Err(ApiError::bad_request(format!(
                            "trait names are 1 to {MAX_TRAIT_KEY} of [A-Za-z0-9_.-]"
                        )));
                    }
                    filter = Some(TraitFilter {
                        key: key.to_owned(),
                        value,
                    });
                }
                Some(_) => return Err(ApiError::bad_request("one trait.<name> filter at most")),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "unknown parameter {name:?}; parameters: after, limit, trait.<name>"
                    )))
                }
            },
        }
    }
    let profiles = state
        .profiles
        .list(&caller.tenant, filter.as_ref(), after, limit)
        .await
        .map_err(port_error)?;
    let next = (profiles.len() == limit)
        .then(|| profiles.last().map(|view| view.profile_id))
        .flatten();
    Ok(Json(ProfilePageBody { profiles, next }))
}

fn page_limit(raw: &str) -> Result<usize, ApiError> {
    raw.parse::<usize>()
        .ok()
        .filter(|limit| (1..=MAX_PAGE).contains(limit))
        .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {MAX_PAGE}")))
}

/// Which page of events.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// The `next` of the previous page.
    after: Option<String>,
    /// At most this many (1 to 200, default 50).
    limit: Option<usize>,
}

/// One archived event of a profile.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProfileEvent)]
pub(crate) struct EventBody {
    event_id: String,
    /// The Segment call: `identify`, `track`, `page`, `screen`, `alias`, `group`.
    event_type: String,
    /// RFC 3339.
    occurred_at: String,
    /// RFC 3339.
    received_at: String,
    /// The Segment message as archived (`events_raw.payload`).
    #[schema(value_type = Object)]
    payload: Value,
    /// The identifier that decided its profile.
    identifier: IdentifierBody,
}

/// An identifier.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProfileIdentifier)]
pub(crate) struct IdentifierBody {
    /// `user_id`, `email` or `anonymous_id`.
    kind: String,
    value: String,
}

impl From<&Identifier> for IdentifierBody {
    fn from(identifier: &Identifier) -> Self {
        Self {
            kind: identifier.kind.as_str().to_owned(),
            value: identifier.value.clone(),
        }
    }
}

/// A page of a profile's events, oldest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProfileEventPage)]
pub(crate) struct EventPageBody {
    /// The live profile (a merged profile's id pages through the one it joined).
    profile_id: Uuid,
    events: Vec<EventBody>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// A profile's events, in time order (from the archive, `events_raw`).
#[utoipa::path(
    get,
    path = "/api/v1/profiles/{profile_id}/events",
    operation_id = "listProfileEvents",
    tag = "profiles",
    params(("profile_id" = Uuid, Path, description = "The profile's id."), EventsQuery),
    responses(
        (status = 200, description = "A page of events.", body = EventPageBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn events(
    State(state): State<Arc<ProfilesApi>>,
    Caller(caller): Caller,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventPageBody>, ApiError> {
    let id = profile_id_of(id)?;
    let query = super::json::query_params(query, "parameters: after, limit")?;
    let limit = match query.limit {
        Some(limit) => page_limit(&limit.to_string())?,
        None => 50,
    };
    let after = query
        .after
        .map(|cursor| {
            cursor
                .split_once('_')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
                .filter(|(_, id)| !id.is_empty())
                .ok_or_else(|| ApiError::bad_request("after must be the next of a previous page"))
        })
        .transpose()?;
    let (profile_id, events) = state
        .profiles
        .events(&caller.tenant, id, after.as_ref(), limit)
        .await
        .map_err(port_error)?
        .ok_or_else(|| not_found(id))?;
    let next = (events.len() == limit)
        .then(|| {
            events
                .last()
                .map(|last| format!("{}_{}", last.event.occurred_at_ms, last.event.event_id))
        })
        .flatten();
    let events = events
        .into_iter()
        .map(|archived| EventBody {
            payload: serde_json::from_slice(&archived.event.payload).unwrap_or(Value::Null),
            event_id: archived.event.event_id,
            event_type: archived.event.event_type,
            occurred_at: rfc3339(archived.event.occurred_at_ms),
            received_at: rfc3339(archived.event.received_at_ms),
            identifier: IdentifierBody::from(&archived.key),
        })
        .collect();
    Ok(Json(EventPageBody {
        profile_id,
        events,
        next,
    }))
}

/// One edge of the identity graph.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProfileMerge)]
pub(crate) struct MergeBody {
    merge_id: Uuid,
    /// The profile that lives on.
    into_profile_id: Uuid,
    /// The profile merged into it.
    from_profile_id: Uuid,
    /// The event that linked them.
    event_id: String,
    /// The identifier of the merged profile the event named.
    identifier: IdentifierBody,
    /// `identify`, `alias` or `shared_identifier`.
    reason: String,
    /// RFC 3339.
    merged_at: String,
    /// RFC 3339, when an unmerge undid it.
    #[serde(skip_serializing_if = "Option::is_none")]
    undone_at: Option<String>,
}

impl From<&Merge> for MergeBody {
    fn from(merge: &Merge) -> Self {
        Self {
            merge_id: merge.id,
            into_profile_id: merge.into,
            from_profile_id: merge.from,
            event_id: merge.event_id.clone(),
            identifier: IdentifierBody::from(&merge.identifier),
            reason: merge.reason.as_str().to_owned(),
            merged_at: rfc3339(merge.merged_at_ms),
            undone_at: merge.undone_at_ms.map(rfc3339),
        }
    }
}

/// Why a profile is what it is.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProfileMerges)]
pub(crate) struct MergesBody {
    profile_id: Uuid,
    /// Merges into and out of it, newest first.
    merges: Vec<MergeBody>,
}

/// "Why are these one profile?": the merges into and out of a profile, with their causes.
#[utoipa::path(
    get,
    path = "/api/v1/profiles/{profile_id}/merges",
    operation_id = "listProfileMerges",
    tag = "profiles",
    params(("profile_id" = Uuid, Path, description = "The profile's id.")),
    responses(
        (status = 200, description = "Its merges.", body = MergesBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn merges(
    State(state): State<Arc<ProfilesApi>>,
    Caller(caller): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<MergesBody>, ApiError> {
    let id = profile_id_of(id)?;
    let merges = state
        .profiles
        .merges(&caller.tenant, id)
        .await
        .map_err(port_error)?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(MergesBody {
        profile_id: id,
        merges: merges.iter().map(MergeBody::from).collect(),
    }))
}

/// Which merge to undo.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UnmergeRequest)]
pub(crate) struct UnmergeBody {
    /// A merge into this profile; default: the newest still in effect.
    merge_id: Option<Uuid>,
}

/// What an unmerge did.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Unmerged)]
pub(crate) struct UnmergedBody {
    /// The merge undone.
    merge: MergeBody,
    /// The profile that stays, recomputed from its events.
    #[schema(value_type = domain::Profile)]
    kept: ProfileView,
    /// The profile split off again, recomputed from its events.
    #[schema(value_type = domain::Profile)]
    restored: ProfileView,
}

/// Split a wrong merge exactly: the merged profile's identifiers go back to it, each event
/// follows the identifier that decided it, both profiles are recomputed from their archived
/// events, and the two are never merged again.
#[utoipa::path(
    post,
    path = "/api/v1/profiles/{profile_id}/unmerge",
    operation_id = "unmergeProfile",
    tag = "profiles",
    params(("profile_id" = Uuid, Path, description = "The profile the merge went into.")),
    request_body(content = UnmergeBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Unmerged.", body = UnmergedBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn unmerge(
    State(state): State<Arc<ProfilesApi>>,
    Caller(caller): Caller,
    id: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<UnmergeBody>,
) -> Result<Json<UnmergedBody>, ApiError> {
    let id = profile_id_of(id)?;
    let done = state
        .profiles
        .unmerge(&caller.tenant, id, body.merge_id)
        .await
        .map_err(port_error)?;
    Ok(Json(UnmergedBody {
        merge: MergeBody::from(&done.merge),
        kept: done
            .kept
            .profile
            .view(done.kept.version, done.kept.updated_at_ms),
        restored: done
            .restored
            .profile
            .view(done.restored.version, done.restored.updated_at_ms),
    }))
}
