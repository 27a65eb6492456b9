//! Handlers for server-side key backup (/room_keys/version and /room_keys/keys).

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    api::{
        AppState,
        extract::{Auth, Body, P, Q},
    },
    error::{Error, Result},
};

#[derive(Deserialize)]
pub struct VersionBody {
    algorithm: String,
    auth_data: Value,
    version: Option<String>,
}

pub async fn create_version(
    State(s): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<VersionBody>,
) -> Result<Json<Value>> {
    let version = s
        .e2ee
        .create_backup(&session.user_id, body.algorithm, body.auth_data)
        .await?;
    Ok(Json(json!({"version": version})))
}

pub async fn latest_version(State(s): State<AppState>, Auth(session): Auth) -> Result<Json<Value>> {
    Ok(Json(s.e2ee.backup_info(&session.user_id, None)?))
}

pub async fn get_version(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(version): P<String>,
) -> Result<Json<Value>> {
    Ok(Json(s.e2ee.backup_info(&session.user_id, Some(&version))?))
}

pub async fn put_version(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(version): P<String>,
    Body(body): Body<VersionBody>,
) -> Result<Json<Value>> {
    s.e2ee
        .update_backup(
            &session.user_id,
            &version,
            body.algorithm,
            body.auth_data,
            body.version,
        )
        .await?;
    Ok(Json(json!({})))
}

pub async fn delete_version(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(version): P<String>,
) -> Result<Json<Value>> {
    s.e2ee.delete_backup(&session.user_id, &version).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct VersionQuery {
    version: String,
}

#[derive(Deserialize)]
pub struct AllKeys {
    rooms: Map<String, Value>,
}

pub async fn put_all(
    State(s): State<AppState>,
    Auth(session): Auth,
    Q(q): Q<VersionQuery>,
    Body(body): Body<AllKeys>,
) -> Result<Json<Value>> {
    Ok(Json(
        s.e2ee
            .put_backup_keys(&session.user_id, &q.version, &body.rooms)
            .await?,
    ))
}

pub async fn put_room(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Q(q): Q<VersionQuery>,
    Body(body): Body<Map<String, Value>>,
) -> Result<Json<Value>> {
    if !body.get("sessions").is_some_and(Value::is_object) {
        return Err(Error::bad_json("body needs a sessions object"));
    }
    let mut rooms = Map::new();
    rooms.insert(room, Value::Object(body));
    Ok(Json(
        s.e2ee
            .put_backup_keys(&session.user_id, &q.version, &rooms)
            .await?,
    ))
}

pub async fn put_session(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, sid)): P<(String, String)>,
    Q(q): Q<VersionQuery>,
    Body(body): Body<Map<String, Value>>,
) -> Result<Json<Value>> {
    let mut rooms = Map::new();
    rooms.insert(room, json!({"sessions": {sid: body}}));
    Ok(Json(
        s.e2ee
            .put_backup_keys(&session.user_id, &q.version, &rooms)
            .await?,
    ))
}

pub async fn get_all(
    State(s): State<AppState>,
    Auth(session): Auth,
    Q(q): Q<VersionQuery>,
) -> Result<Json<Value>> {
    Ok(Json(s.e2ee.get_backup_keys(
        &session.user_id,
        &q.version,
        None,
        None,
    )?))
}

pub async fn get_room(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Q(q): Q<VersionQuery>,
) -> Result<Json<Value>> {
    Ok(Json(s.e2ee.get_backup_keys(
        &session.user_id,
        &q.version,
        Some(&room),
        None,
    )?))
}

pub async fn get_session(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, sid)): P<(String, String)>,
    Q(q): Q<VersionQuery>,
) -> Result<Json<Value>> {
    Ok(Json(s.e2ee.get_backup_keys(
        &session.user_id,
        &q.version,
        Some(&room),
        Some(&sid),
    )?))
}

pub async fn delete_all(
    State(s): State<AppState>,
    Auth(session): Auth,
    Q(q): Q<VersionQuery>,
) -> Result<Json<Value>> {
    Ok(Json(
        s.e2ee
            .delete_backup_keys(&session.user_id, &q.version, None, None)
            .await?,
    ))
}

pub async fn delete_room(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Q(q): Q<VersionQuery>,
) -> Result<Json<Value>> {
    Ok(Json(
        s.e2ee
            .delete_backup_keys(&session.user_id, &q.version, Some(&room), None)
            .await?,
    ))
}

pub async fn delete_session(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, sid)): P<(String, String)>,
    Q(q): Q<VersionQuery>,
) -> Result<Json<Value>> {
    Ok(Json(
        s.e2ee
            .delete_backup_keys(&session.user_id, &q.version, Some(&room), Some(&sid))
            .await?,
    ))
}
