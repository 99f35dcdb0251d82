//! Extractors whose rejections are [`ApiError`]s, so a malformed request gets the
//! envelope with a message naming the problem.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use coditect_proto::ErrorCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// JSON body, parsed into `T`: `Content-Type: application/json` (or `+json`) and an object.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is over the size limit",
                ),
                _ => ApiError::bad_request(format!(
                    "cannot read the request body: {}",
                    e.body_text()
                )),
            })?;
        from_object("JSON", &body).map(Json)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON object into `T`, `what` naming the format in the error ("JSON", "Loki JSON").
/// serde would read a JSON array as a struct's fields in order, which no documented body is,
/// so anything but an object is refused before parsing.
pub fn from_object<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, ApiError> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(ApiError::bad_request(format!(
            "malformed {what}: the body must be a JSON object"
        )));
    }
    let failed = |e: serde_json::Error, path: Option<String>| {
        let kind = match e.classify() {
            serde_json::error::Category::Data => "invalid",
            _ => "malformed",
        };
        let at = path
            .filter(|p| p != "." && p != "?")
            .map(|p| format!("{p}: "))
            .unwrap_or_default();
        ApiError::bad_request(format!("{kind} {what}: {at}{e}"))
    };
    // The plain parse is the hot path (log batches); only a refused body is parsed again,
    // tracking the path, to name the field at fault.
    serde_json::from_slice(body).map_err(|e| {
        if e.classify() != serde_json::error::Category::Data {
            return failed(e, None);
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Err(traced) => {
                let path = traced.path().to_string();
                failed(traced.into_inner(), Some(path))
            }
            Ok(_) => failed(e, None),
        }
    })
}

/// axum's texts read "Failed to parse the request body as JSON: <reason>"; keep the reason.
fn inner_reason(text: &str) -> &str {
    text.split_once(": ").map_or(text, |(_, reason)| reason)
}

/// Wraps one of axum's request-parts extractors so its rejection is a 400 envelope whose
/// message names the problem.
macro_rules! parts_extractor {
    ($(#[$doc:meta])* $name:ident, $inner:path, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name<T>(pub T);

        impl<S, T> axum::extract::FromRequestParts<S> for $name<T>
        where
            T: DeserializeOwned + Send,
            S: Send + Sync,
        {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut axum::http::request::Parts,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                use $inner as Inner;
                match Inner::<T>::from_request_parts(parts, state).await {
                    Ok(Inner(value)) => Ok($name(value)),
                    Err(rejection) => Err(ApiError::bad_request(format!(
                        concat!($what, ": {}"),
                        inner_reason(&rejection.body_text())
                    ))),
                }
            }
        }
    };
}

parts_extractor!(
    /// Path parameters, parsed into `T`; a malformed one is a 400 naming it.
    Path,
    axum::extract::Path,
    "invalid path parameter"
);

parts_extractor!(
    /// Query parameters, parsed into `T`; a malformed one is a 400 naming it.
    Query,
    axum::extract::Query,
    "invalid query"
);

/// An instant given by a client, checked to lie where both stores can keep it (years 1970
/// to 9999): PostgreSQL refuses far dates that SQLite would take.
pub fn check_instant(
    name: &str,
    at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    use chrono::Datelike;
    match at {
        Some(t) if !(1970..=9999).contains(&t.year()) => Err(ApiError::bad_request(format!(
            "{name} must be between the years 1970 and 9999"
        ))),
        other => Ok(other),
    }
}

/// Text a client filters by (an audit actor or action, a component, search words): at
/// most [`FilterText::MAX`] bytes, no control characters (PostgreSQL refuses NUL in text,
/// and such text is never a real value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterText(String);

impl FilterText {
    pub const MAX: usize = 4096;

    pub fn parse(text: String) -> Result<FilterText, String> {
        if text.len() > Self::MAX {
            Err(format!("at most {} bytes", Self::MAX))
        } else if text.chars().any(char::is_control) {
            Err("no control characters".into())
        } else {
            Ok(FilterText(text))
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for FilterText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FilterText::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for FilterText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .max_length(Some(Self::MAX))
            // Unicode category Cc, as `char::is_control`.
            .pattern(Some("^[^\\x00-\\x1f\\x7f-\\x9f]*$"))
            .into()
    }
}

impl utoipa::ToSchema for FilterText {}

#[cfg(test)]
mod tests {
    use super::{FilterText, from_object};

    #[test]
    fn filter_text_refuses_control_characters_and_length() {
        assert!(FilterText::parse("api server-1 ÉTÉ".into()).is_ok());
        for bad in ["a\0b", "tab\there", "\u{85}", "\u{7f}"] {
            assert!(FilterText::parse(bad.into()).is_err(), "{bad:?}");
        }
        assert!(FilterText::parse("x".repeat(FilterText::MAX + 1)).is_err());
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Pair {
        a: u32,
        b: String,
    }

    #[test]
    fn only_an_object_is_a_body() {
        let pair = from_object::<Pair>("JSON", b" \n{\"a\": 1, \"b\": \"x\"}");
        assert_eq!(
            pair.ok(),
            Some(Pair {
                a: 1,
                b: "x".into()
            })
        );
        // serde alone would accept this array as the struct's fields in order.
        assert!(serde_json::from_slice::<Pair>(b"[1, \"x\"]").is_ok());
        for bad in [&b"[1, \"x\"]"[..], b"[]", b"", b"null", b"\"a\""] {
            let e = from_object::<Pair>("JSON", bad)
                .err()
                .map(|e| e.message().to_string());
            assert!(
                e.is_some_and(|e| e.contains("must be a JSON object")),
                "{bad:?}"
            );
        }
        let e = from_object::<Pair>("JSON", b"{\"a\": 1,").err();
        let e = e.map(|e| e.message().to_string()).unwrap_or_default();
        assert!(e.starts_with("malformed JSON"), "{e}");
        let e = from_object::<Pair>("JSON", b"{\"a\": 1, \"b\": \"x\"} {}").err();
        assert!(e.is_some_and(|e| e.message().contains("trailing characters")));
        let e = from_object::<Pair>("JSON", b"{\"a\": \"one\", \"b\": \"x\"}").err();
        assert!(e.is_some_and(|e| {
            e.message()
                .to_string()
                .starts_with("invalid JSON: a: invalid type")
        }));
    }
}
