//! JSON bodies whose every rejection is a JSON error of the house shape, and in which a struct
//! is always a JSON object (never serde's array form, see [`crate::objects`]).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::objects::ObjectsOnly;
use crate::ApiError;

/// Like [`axum::Json`], but bad input is a 4xx `{"error":{…}}` instead of axum's plain text,
/// and a struct anywhere in the body must be an object: `"pickup": [13.4, 52.5]` is refused
/// ("pickup: expected an object") rather than read as lat/lng by position.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    rejection.body_text(),
                )
            } else {
                ApiError::bad_request(rejection.body_text())
            }
        })?;
        from_json(&bytes).map(ApiJson)
    }
}

/// `application/json` or an `application/*+json` type, any parameters.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as one JSON value of type `T` with objects only for structs; the error names
/// the field where it went wrong (`pickup.lat: invalid type: …`).
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(ObjectsOnly(&mut json)).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            ApiError::bad_request(format!("the body: {inner}"))
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })?;
    json.end()
        .map_err(|err| ApiError::bad_request(format!("the body: {err}")))?;
    Ok(value)
}

/// The parameters of a query string, or a 400 of the house shape: serde's reason, then `hint`
/// (what the route expects).
pub(crate) fn query_params<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
    hint: &str,
) -> Result<T, ApiError> {
    query
        .map(|axum::extract::Query(params)| params)
        .map_err(|rejection| ApiError::bad_request(format!("{}; {hint}", rejection.body_text())))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::Value;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Point {
        lat: f64,
        lng: f64,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Trip {
        pickup: Point,
        #[serde(default)]
        dropoff: Option<Point>,
        #[serde(default)]
        stops: Vec<Point>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        leg: Option<Leg>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Leg {
        to: Point,
    }

    fn refused(body: &str) -> String {
        let err = from_json::<Trip>(body.as_bytes()).expect_err(body);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{body}");
        err.message().to_owned()
    }

    #[test]
    fn objects_are_read_at_every_depth_and_real_arrays_still_work() {
        let trip: Trip = from_json(
            br#"{"pickup":{"lat":52.5,"lng":13.4},"dropoff":{"lat":1,"lng":2},
                "stops":[{"lat":3,"lng":4}],"tags":["a","b"],"leg":{"to":{"lat":5,"lng":6}}}"#,
        )
        .expect("all objects");
        assert_eq!(
            trip.pickup,
            Point {
                lat: 52.5,
                lng: 13.4
            }
        );
        assert_eq!(trip.dropoff, Some(Point { lat: 1.0, lng: 2.0 }));
        assert_eq!(trip.stops, vec![Point { lat: 3.0, lng: 4.0 }]);
        assert_eq!(trip.tags, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            trip.leg.map(|leg| leg.to),
            Some(Point { lat: 5.0, lng: 6.0 })
        );
        let pair: (u8, Vec<u8>) = from_json(b"[1,[2,3]]").expect("tuples and vectors");
        assert_eq!(pair, (1, vec![2, 3]));
    }

    #[test]
    fn a_struct_given_as_an_array_is_refused_naming_its_field() {
        let message = refused(r#"{"pickup":[13.405,52.52]}"#);
        assert!(
            message.starts_with("pickup: expected an object"),
            "{message}"
        );
    }

    #[test]
    fn an_optional_struct_given_as_an_array_is_refused() {
        let message = refused(r#"{"pickup":{"lat":1,"lng":2},"dropoff":[1,2]}"#);
        assert!(
            message.starts_with("dropoff: expected an object"),
            "{message}"
        );
    }

    #[test]
    fn a_struct_inside_a_vector_given_as_an_array_is_refused() {
        let message = refused(r#"{"pickup":{"lat":1,"lng":2},"stops":[{"lat":1,"lng":2},[3,4]]}"#);
        assert!(
            message.starts_with("stops[1]: expected an object"),
            "{message}"
        );
    }

    #[test]
    fn a_nested_struct_given_as_an_array_is_refused() {
        let message = refused(r#"{"pickup":{"lat":1,"lng":2},"leg":{"to":[1,2]}}"#);
        assert!(
            message.starts_with("leg.to: expected an object"),
            "{message}"
        );
        let message = refused(r#"{"pickup":{"lat":1,"lng":2},"leg":[[1,2]]}"#);
        assert!(message.starts_with("leg: expected an object"), "{message}");
    }

    #[test]
    fn a_body_that_is_an_array_is_refused() {
        let message = refused(r#"[{"lat":1,"lng":2}]"#);
        assert!(
            message.starts_with("the body: expected an object"),
            "{message}"
        );
    }

    #[test]
    fn other_bad_bodies_name_what_is_wrong() {
        assert!(
            refused(r#"{"pickup":{"lat":"NaN","lng":2}}"#).starts_with("pickup.lat: invalid type")
        );
        assert!(refused(r#"{"pickup":{"lat":1e400,"lng":2}}"#).contains("number out of range"));
        assert!(refused(r#"{"pickup":{"lat":1,"lng":2,"alt":3}}"#).contains("unknown field"));
        assert!(refused(r#"{"pickup":{"lat":1,"lat":2,"lng":2}}"#).contains("duplicate field"));
        assert!(
            refused(r#"{"pickup":{"lat":1,"lng":2}} trailing"#).starts_with("the body: trailing")
        );
        assert!(refused("").starts_with("the body: EOF"));
        // Through the adapter as deep as serde_json allows (128), then refused, not overflowed.
        let deep = format!("{}{}", "[{\"a\":".repeat(10_000), "}]".repeat(10_000));
        let err = from_json::<Value>(deep.as_bytes()).expect_err("too deep");
        assert!(
            err.message().contains("recursion limit"),
            "{}",
            err.message()
        );
    }
}
