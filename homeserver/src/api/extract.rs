//! Request extractors that turn HTTP input into typed values or a spec error (never a panic, never a plain-text rejection).

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{header, request::Parts},
};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::de::DeserializeOwned;

use super::AppState;
use crate::{accounts::Session, error::Error};

/// The authenticated caller, from `Authorization: Bearer` or `?access_token=`.
pub struct Auth(pub Session);

impl FromRequestParts<AppState> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let from_header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let token = match from_header {
            Some(t) => t,
            None => parts
                .uri
                .query()
                .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
                .and_then(|pairs| {
                    pairs
                        .into_iter()
                        .find(|(k, _)| k == "access_token")
                        .map(|(_, v)| v)
                })
                .ok_or(Error::MissingToken)?,
        };
        Ok(Auth(state.accounts.authenticate(&token)?))
    }
}

/// The caller if they sent a token (endpoints where authentication is
/// optional); a token that is sent but invalid is still an error.
pub struct MaybeAuth(pub Option<Session>);

impl FromRequestParts<AppState> for MaybeAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        match Auth::from_request_parts(parts, state).await {
            Ok(Auth(s)) => Ok(MaybeAuth(Some(s))),
            Err(Error::MissingToken) => Ok(MaybeAuth(None)),
            Err(e) => Err(e),
        }
    }
}

/// The client's address as seen on the socket ("unknown" if the server was
/// built without connection info, as in some unit tests).
pub struct ClientAddr(pub String);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Error> {
        let addr = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        Ok(ClientAddr(addr))
    }
}

/// A JSON object body, size-limited; syntax errors are M_NOT_JSON, shape
/// errors M_BAD_JSON. An empty body counts as `{}`.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let limit = state.config.max_request_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(Error::TooLarge { limit });
        }
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| Error::TooLarge { limit })?;
        let value: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::NotJson(format!("body is not valid JSON: {e}")))?
        };
        if !value.is_object() {
            return Err(Error::NotJson("body must be a JSON object".into()));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| Error::bad_json(e.to_string()))
    }
}

/// Path parameters; a malformed one is M_INVALID_PARAM.
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for P<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| P(t))
            .map_err(|e| Error::invalid_param(e.body_text()))
    }
}

/// Query parameters; a malformed one is M_INVALID_PARAM.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Q<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Q(t))
            .map_err(|e| Error::invalid_param(e.body_text()))
    }
}

pub fn room_id(s: &str) -> Result<OwnedRoomId, Error> {
    RoomId::parse(s).map_err(|e| Error::invalid_param(format!("invalid room ID: {e}")))
}

pub fn user_id(s: &str) -> Result<OwnedUserId, Error> {
    UserId::parse(s).map_err(|e| Error::invalid_param(format!("invalid user ID: {e}")))
}
