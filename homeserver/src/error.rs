//! The server's one error type and its single mapping to Matrix JSON errors.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::storage::StorageError;

/// Every failure a request can meet. Handlers and services return it; only
/// `into_response` below decides the HTTP status and `errcode`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotJson(String),
    #[error("{0}")]
    BadJson(String),
    #[error("missing access token")]
    MissingToken,
    #[error("unknown access token")]
    UnknownToken { soft_logout: bool },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("unrecognized request")]
    Unrecognized { method_not_allowed: bool },
    #[error("request body over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("user ID already taken")]
    UserInUse,
    #[error("{0}")]
    InvalidUsername(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    MissingParam(String),
    #[error("{0}")]
    RoomInUse(String),
    #[error("guest access is not allowed")]
    GuestAccessForbidden,
    #[error("room alias already exists")]
    AliasExists,
    #[error("room version not supported")]
    UnsupportedRoomVersion,
    #[error("{0}")]
    InvalidRoomState(String),
    /// A request the spec has no better code for (e.g. an unsupported login type).
    #[error("{0}")]
    Unknown(String),
    /// Our own failure (serialising our own values, a task that died, a
    /// file we cannot write): 500, logged as an error.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("too many requests")]
    LimitExceeded { retry_after_ms: u64 },
    #[error("{0}")]
    InvalidSignature(String),
    #[error("this media has already been uploaded")]
    CannotOverwriteMedia,
    #[error("the media has not been uploaded yet")]
    NotYetUploaded,
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable,
    #[error("this is not the current backup version")]
    WrongRoomKeysVersion { current_version: Option<String> },
    #[error("the profile would exceed 64 KiB")]
    ProfileTooLarge,
    #[error("you already sent this annotation")]
    DuplicateAnnotation,
    /// User-interactive auth is needed: the body is the UIA state, status 401.
    #[error("user-interactive authentication required")]
    Uia(serde_json::Value),
    #[error("room version {0} is not supported here")]
    IncompatibleRoomVersion(String),
    /// A server-server request without valid X-Matrix authentication.
    #[error("{0}")]
    Unauthorized(String),
    /// Another server could not be reached or gave an unusable answer.
    #[error("{0}")]
    Remote(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Error::Forbidden(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    pub fn bad_json(msg: impl Into<String>) -> Self {
        Error::BadJson(msg.into())
    }
    pub fn invalid_param(msg: impl Into<String>) -> Self {
        Error::InvalidParam(msg.into())
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use Error::*;
        match self {
            NotJson(_) => (StatusCode::BAD_REQUEST, "M_NOT_JSON"),
            BadJson(_) => (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            MissingToken => (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN"),
            UnknownToken { .. } => (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
            NotFound(_) => (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
            Unrecognized {
                method_not_allowed: false,
            } => (StatusCode::NOT_FOUND, "M_UNRECOGNIZED"),
            Unrecognized {
                method_not_allowed: true,
            } => (StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED"),
            TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
            UserInUse => (StatusCode::BAD_REQUEST, "M_USER_IN_USE"),
            InvalidUsername(_) => (StatusCode::BAD_REQUEST, "M_INVALID_USERNAME"),
            InvalidParam(_) => (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            MissingParam(_) => (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
            RoomInUse(_) => (StatusCode::BAD_REQUEST, "M_ROOM_IN_USE"),
            GuestAccessForbidden => (StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"),
            AliasExists => (StatusCode::CONFLICT, "M_UNKNOWN"),
            UnsupportedRoomVersion => (StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION"),
            InvalidRoomState(_) => (StatusCode::BAD_REQUEST, "M_INVALID_ROOM_STATE"),
            Unknown(_) => (StatusCode::BAD_REQUEST, "M_UNKNOWN"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
            Uia(_) => (StatusCode::UNAUTHORIZED, "M_FORBIDDEN"),
            LimitExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
            DuplicateAnnotation => (StatusCode::BAD_REQUEST, "M_DUPLICATE_ANNOTATION"),
            ProfileTooLarge => (StatusCode::BAD_REQUEST, "M_PROFILE_TOO_LARGE"),
            InvalidSignature(_) => (StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE"),
            CannotOverwriteMedia => (StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA"),
            NotYetUploaded => (StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED"),
            RangeNotSatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, "M_UNKNOWN"),
            WrongRoomKeysVersion { .. } => (StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION"),
            IncompatibleRoomVersion(_) => (StatusCode::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"),
            Remote(_) => (StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
            Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, errcode) = self.status_and_code();
        tracing::debug!("request failed: {errcode} {self}");
        let body = match &self {
            Error::Uia(state) => state.clone(),
            Error::Storage(e) => {
                tracing::error!("storage failure: {e}");
                json!({"errcode": errcode, "error": "internal storage error"})
            }
            Error::Internal(e) => {
                tracing::error!("internal failure: {e}");
                json!({"errcode": errcode, "error": "internal server error"})
            }
            Error::UnknownToken { soft_logout } => {
                json!({"errcode": errcode, "error": self.to_string(), "soft_logout": soft_logout})
            }
            Error::WrongRoomKeysVersion { current_version } => {
                json!({"errcode": errcode, "error": self.to_string(), "current_version": current_version})
            }
            Error::IncompatibleRoomVersion(v) => {
                json!({"errcode": errcode, "error": self.to_string(), "room_version": v})
            }
            Error::LimitExceeded { retry_after_ms } => {
                json!({"errcode": errcode, "error": self.to_string(), "retry_after_ms": retry_after_ms})
            }
            _ => json!({"errcode": errcode, "error": self.to_string()}),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Error::LimitExceeded { retry_after_ms } = &self {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        if matches!(self, Error::TooLarge { .. }) {
            // The unread rest of the body is still on the wire: the
            // connection cannot be reused, and the client must know.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
