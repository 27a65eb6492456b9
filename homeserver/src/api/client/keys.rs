//! Handlers for /keys/* (upload, query, claim, changes, cross-signing, signatures) and /sendToDevice.

use std::collections::BTreeMap;

use axum::{Json, extract::State};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    accounts::uia::AuthData,
    api::{
        AppState,
        client::account::require_password_uia,
        extract::{Auth, Body, P, Q},
    },
    e2ee::{cross_signing::CrossSigningUpload, keys::Upload},
    error::{Error, Result},
    sync::parse_token,
};

pub async fn upload(
    State(s): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<Upload>,
) -> Result<Json<Value>> {
    let counts = s
        .e2ee
        .upload(&session.user_id, session.device_id.as_str(), body)
        .await?;
    Ok(Json(json!({"one_time_key_counts": counts})))
}

#[derive(Deserialize)]
pub struct QueryBody {
    device_keys: BTreeMap<OwnedUserId, Vec<String>>,
    #[allow(dead_code)]
    timeout: Option<u64>,
}

pub async fn query(
    State(s): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<QueryBody>,
) -> Result<Json<Value>> {
    let viewer = &session.user_id;
    let (mut devices, mut masters, mut self_signing, mut user_signing, mut failures) =
        (Map::new(), Map::new(), Map::new(), Map::new(), Map::new());
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (user, only) in &body.device_keys {
        if user.server_name() != s.config.server_name {
            remote
                .entry(user.server_name().to_string())
                .or_default()
                .insert(user.to_string(), json!(only));
            continue;
        }
        devices.insert(
            user.to_string(),
            Value::Object(s.e2ee.device_keys(viewer, user, only)?),
        );
        if let Some(k) = s.e2ee.cross_signing_for(viewer, user, "master")? {
            masters.insert(user.to_string(), k);
        }
        if let Some(k) = s.e2ee.cross_signing_for(viewer, user, "self_signing")? {
            self_signing.insert(user.to_string(), k);
        }
        // Only the owner ever sees their user-signing key.
        if user == viewer
            && let Some(k) = s.e2ee.cross_signing_for(viewer, user, "user_signing")?
        {
            user_signing.insert(user.to_string(), k);
        }
    }
    if !remote.is_empty() {
        let r = s.federation.query_remote_keys(remote).await;
        devices.extend(r.device_keys);
        masters.extend(r.master_keys);
        self_signing.extend(r.self_signing_keys);
        failures.extend(r.failures);
    }
    Ok(Json(json!({
        "device_keys": devices,
        "master_keys": masters,
        "self_signing_keys": self_signing,
        "user_signing_keys": user_signing,
        "failures": failures,
    })))
}

#[derive(Deserialize)]
pub struct ClaimBody {
    one_time_keys: BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    #[allow(dead_code)]
    timeout: Option<u64>,
}

pub async fn claim(
    State(s): State<AppState>,
    Auth(_session): Auth,
    Body(body): Body<ClaimBody>,
) -> Result<Json<Value>> {
    let mut local = BTreeMap::new();
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (user, devices) in body.one_time_keys {
        if user.server_name() == s.config.server_name {
            local.insert(user, devices);
        } else {
            remote
                .entry(user.server_name().to_string())
                .or_default()
                .insert(user.to_string(), json!(devices));
        }
    }
    let mut keys = s.e2ee.claim(&local).await?;
    let mut failures = Map::new();
    if !remote.is_empty() {
        let (k, f) = s.federation.claim_remote_keys(remote).await;
        keys.extend(k);
        failures.extend(f);
    }
    Ok(Json(json!({"one_time_keys": keys, "failures": failures})))
}

#[derive(Deserialize)]
pub struct ChangesQuery {
    from: String,
    to: String,
}

pub async fn changes(
    State(s): State<AppState>,
    Auth(session): Auth,
    Q(q): Q<ChangesQuery>,
) -> Result<Json<Value>> {
    let from = parse_token(&q.from)?;
    let to = parse_token(&q.to)?.min(s.rooms.stream.current());
    let c = s.e2ee.device_list_changes(&session.user_id, from, to)?;
    Ok(Json(json!({"changed": c.changed, "left": c.left})))
}

#[derive(Deserialize)]
pub struct DeviceSigningBody {
    #[serde(flatten)]
    keys: CrossSigningUpload,
    auth: Option<AuthData>,
}

pub async fn device_signing_upload(
    State(s): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<DeviceSigningBody>,
) -> Result<Json<Value>> {
    // The first upload needs no extra auth (a fresh account has nothing to
    // protect); replacing keys does, or a stolen token could swap them.
    if s.e2ee
        .cross_signing_replaces(&session.user_id, &body.keys)?
    {
        require_password_uia(&s, &session, body.auth.as_ref()).await?;
    }
    s.e2ee
        .upload_cross_signing(&session.user_id, body.keys)
        .await?;
    Ok(Json(json!({})))
}

pub async fn signatures_upload(
    State(s): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<BTreeMap<String, Map<String, Value>>>,
) -> Result<Json<Value>> {
    let failures = s.e2ee.upload_signatures(&session.user_id, body).await?;
    Ok(Json(json!({"failures": failures})))
}

#[derive(Deserialize)]
pub struct ToDeviceBody {
    messages: Map<String, Value>,
}

pub async fn send_to_device(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((kind, txn)): P<(String, String)>,
    Body(body): Body<ToDeviceBody>,
) -> Result<Json<Value>> {
    if kind.is_empty() || kind.len() > 255 {
        return Err(Error::invalid_param("event type must be 1-255 bytes"));
    }
    s.e2ee
        .send_to_device(
            &session.user_id,
            session.device_id.as_str(),
            &txn,
            &kind,
            body.messages,
        )
        .await?;
    Ok(Json(json!({})))
}
