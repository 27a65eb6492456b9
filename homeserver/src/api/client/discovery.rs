//! Handlers clients call before logging in: /versions, .well-known, /capabilities.

use axum::{Json, extract::State, http::HeaderMap};
use serde_json::{Value, json};

use crate::{
    api::{AppState, extract::Auth},
    config::SUPPORTED_ROOM_VERSIONS,
};

pub async fn versions() -> Json<Value> {
    Json(json!({
        "versions": ["r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"],
        "unstable_features": {},
    }))
}

/// Points clients at `public_base_url`, or else at the URL the request came
/// in on (behind a TLS proxy, `X-Forwarded-Proto` says it was https).
pub async fn well_known_client(State(s): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let base_url = s.config.public_base_url.clone().unwrap_or_else(|| {
        let header = |name: &str| headers.get(name).and_then(|h| h.to_str().ok());
        let host = header("host")
            .map(str::to_owned)
            .unwrap_or_else(|| s.config.listen.to_string());
        let scheme = match header("x-forwarded-proto") {
            Some("https") => "https",
            _ => "http",
        };
        format!("{scheme}://{host}")
    });
    Json(json!({"m.homeserver": {"base_url": base_url}}))
}

pub async fn capabilities(State(s): State<AppState>, Auth(_): Auth) -> Json<Value> {
    let available: serde_json::Map<String, Value> = SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| (v.to_string(), Value::from("stable")))
        .collect();
    Json(json!({
        "capabilities": {
            "m.room_versions": {"default": s.config.default_room_version.as_str(), "available": available},
            "m.change_password": {"enabled": true},
            // Profile changes work (PUT /profile/{userId}/{field}): clients
            // hide "rename" when these say otherwise.
            "m.set_displayname": {"enabled": true},
            "m.set_avatar_url": {"enabled": true},
            "m.profile_fields": {"enabled": true},
            "m.3pid_changes": {"enabled": false},
        }
    }))
}
