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

/// Points clients at the URL they reached us on, unless it is configured.
pub async fn well_known_client(State(s): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| s.config.listen.to_string());
    Json(json!({"m.homeserver": {"base_url": format!("http://{host}")}}))
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
            "m.set_displayname": {"enabled": false},
            "m.set_avatar_url": {"enabled": false},
            "m.3pid_changes": {"enabled": false},
        }
    }))
}
