//! /_matrix/key/v2: our signed key document, and the notary endpoints that vouch for other servers' keys.

use axum::{Json, extract::State};
use bellwire_federation::server_keys;
use serde_json::{Value, json};

use crate::{
    accounts::now_ms,
    api::{AppState, extract::P},
    error::{Error, Result},
};

/// Other servers may cache our key document this long.
const VALIDITY_MS: u64 = 24 * 3600 * 1000;

fn own_document(s: &AppState) -> Result<Value> {
    server_keys::key_document(
        s.config.server_name.as_str(),
        &s.federation.key,
        &s.federation.old_keys,
        now_ms() + VALIDITY_MS,
    )
    .map_err(Error::internal)
}

pub async fn server_keys(State(s): State<AppState>) -> Result<Json<Value>> {
    Ok(Json(own_document(&s)?))
}

/// The document for `server`, countersigned by us (fetched if not cached).
async fn notarised(s: &AppState, server: &str) -> Option<Value> {
    let doc = if server == s.config.server_name.as_str() {
        own_document(s).ok()?
    } else {
        match s.federation.keys.cached_document(server) {
            Some(d) if d["valid_until_ts"].as_u64().is_some_and(|t| t > now_ms()) => d,
            _ => {
                s.federation.keys.refresh(server).await.ok()?;
                s.federation.keys.cached_document(server)?
            }
        }
    };
    server_keys::countersign(&doc, s.config.server_name.as_str(), &s.federation.key).ok()
}

pub async fn query(
    State(s): State<AppState>,
    crate::api::extract::Body(body): crate::api::extract::Body<Value>,
) -> Result<Json<Value>> {
    s.federation.require_enabled()?;
    let wanted = body["server_keys"]
        .as_object()
        .ok_or_else(|| Error::bad_json("server_keys must be an object"))?;
    let mut out = Vec::new();
    for server in wanted.keys().take(20) {
        if let Some(d) = notarised(&s, server).await {
            out.push(d);
        }
    }
    Ok(Json(json!({"server_keys": out})))
}

pub async fn query_one(State(s): State<AppState>, P(server): P<String>) -> Result<Json<Value>> {
    s.federation.require_enabled()?;
    let out: Vec<Value> = notarised(&s, &server).await.into_iter().collect();
    Ok(Json(json!({"server_keys": out})))
}
