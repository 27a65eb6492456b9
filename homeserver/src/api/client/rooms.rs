//! Handlers for room creation, membership changes, joined rooms and room aliases.

use axum::{
    Json,
    extract::{RawQuery, State},
};
use ruma::{OwnedRoomId, RoomAliasId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        extract::{Auth, Body, P, room_id, user_id},
    },
    error::{Error, Result},
    rooms::create::CreateRoom,
};

pub async fn create_room(
    State(s): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<CreateRoom>,
) -> Result<Json<Value>> {
    let public = body.visibility.as_deref() == Some("public");
    let remote: Vec<_> = body
        .invite
        .iter()
        .filter(|u| u.server_name() != s.config.server_name)
        .cloned()
        .collect();
    let is_direct = body.is_direct;
    let room_id = s.rooms.create_room(&session.user_id, body).await?;
    for invitee in remote {
        s.federation
            .invite(&session.user_id, &room_id, &invitee, None, is_direct)
            .await?;
    }
    if public {
        s.public_rooms
            .set_visibility(&session.user_id, &room_id, true)?;
    }
    Ok(Json(json!({"room_id": room_id})))
}

pub async fn joined_rooms(State(s): State<AppState>, Auth(session): Auth) -> Result<Json<Value>> {
    Ok(Json(
        json!({"joined_rooms": s.rooms.joined_rooms(&session.user_id)?}),
    ))
}

/// A room ID, or an alias resolved on this server.
/// A room ID, or an alias resolved here or by its server (whose answer
/// also names servers to join through).
async fn resolve(s: &AppState, id_or_alias: &str) -> Result<(OwnedRoomId, Vec<String>)> {
    if id_or_alias.starts_with('#') {
        let alias =
            RoomAliasId::parse(id_or_alias).map_err(|e| Error::invalid_param(e.to_string()))?;
        if alias.server_name() != s.config.server_name {
            return s.federation.remote_alias(&alias).await;
        }
        let room = s
            .rooms
            .resolve_alias(&alias)?
            .ok_or_else(|| Error::not_found("room alias not found"))?;
        Ok((room, Vec::new()))
    } else {
        Ok((room_id(id_or_alias)?, Vec::new()))
    }
}

#[derive(Deserialize)]
pub struct ReasonBody {
    reason: Option<String>,
}

pub async fn join_by_id_or_alias(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(target): P<String>,
    RawQuery(q): RawQuery,
    Body(_body): Body<ReasonBody>,
) -> Result<Json<Value>> {
    let (room, alias_servers) = resolve(&s, &target).await?;
    // `via` (and the older `server_name`) name servers to join through.
    let mut via: Vec<String> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(q.as_deref().unwrap_or(""))
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k == "via" || k == "server_name")
            .map(|(_, v)| v)
            .collect();
    via.extend(alias_servers);
    s.federation.join(&session.user_id, &room, &via).await?;
    Ok(Json(json!({"room_id": room})))
}

pub async fn leave(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Body(body): Body<ReasonBody>,
) -> Result<Json<Value>> {
    s.federation
        .leave(&session.user_id, &room_id(&room)?, body.reason.as_deref())
        .await?;
    Ok(Json(json!({})))
}

pub async fn forget(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
) -> Result<Json<Value>> {
    s.rooms.forget(&session.user_id, &room_id(&room)?).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct TargetBody {
    user_id: String,
    reason: Option<String>,
}

pub async fn invite(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Body(body): Body<TargetBody>,
) -> Result<Json<Value>> {
    let target = user_id(&body.user_id)?;
    s.federation
        .invite(
            &session.user_id,
            &room_id(&room)?,
            &target,
            body.reason.as_deref(),
            false,
        )
        .await?;
    Ok(Json(json!({})))
}

pub async fn kick(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Body(body): Body<TargetBody>,
) -> Result<Json<Value>> {
    let target = user_id(&body.user_id)?;
    s.rooms
        .kick(
            &session.user_id,
            &room_id(&room)?,
            &target,
            body.reason.as_deref(),
        )
        .await?;
    Ok(Json(json!({})))
}

pub async fn ban(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Body(body): Body<TargetBody>,
) -> Result<Json<Value>> {
    let target = user_id(&body.user_id)?;
    s.rooms
        .ban(
            &session.user_id,
            &room_id(&room)?,
            &target,
            body.reason.as_deref(),
        )
        .await?;
    Ok(Json(json!({})))
}

pub async fn unban(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Body(body): Body<TargetBody>,
) -> Result<Json<Value>> {
    let target = user_id(&body.user_id)?;
    s.rooms
        .unban(
            &session.user_id,
            &room_id(&room)?,
            &target,
            body.reason.as_deref(),
        )
        .await?;
    Ok(Json(json!({})))
}

fn alias(s: &str) -> Result<&RoomAliasId> {
    <&RoomAliasId>::try_from(s)
        .map_err(|e| Error::invalid_param(format!("invalid room alias: {e}")))
}

pub async fn get_alias(State(s): State<AppState>, P(a): P<String>) -> Result<Json<Value>> {
    let a = alias(&a)?;
    if a.server_name() != s.config.server_name {
        let (room, servers) = s.federation.remote_alias(a).await?;
        return Ok(Json(json!({"room_id": room, "servers": servers})));
    }
    let room = s
        .rooms
        .resolve_alias(a)?
        .ok_or_else(|| Error::not_found("room alias not found"))?;
    let mut servers = vec![s.config.server_name.to_string()];
    servers.extend(s.rooms.remote_servers(&room)?);
    Ok(Json(json!({"room_id": room, "servers": servers})))
}

#[derive(Deserialize)]
pub struct AliasBody {
    room_id: String,
}

pub async fn put_alias(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(a): P<String>,
    Body(body): Body<AliasBody>,
) -> Result<Json<Value>> {
    let a = alias(&a)?;
    let room = room_id(&body.room_id)?;
    if s.rooms.membership_of(&room, &session.user_id)?.as_deref() != Some("join") {
        return Err(Error::forbidden("you are not in this room"));
    }
    s.rooms.set_alias(a, &room, &session.user_id).await?;
    Ok(Json(json!({})))
}

pub async fn delete_alias(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(a): P<String>,
) -> Result<Json<Value>> {
    s.rooms.delete_alias(alias(&a)?, &session.user_id).await?;
    Ok(Json(json!({})))
}

pub async fn room_aliases(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    s.rooms.visible_until(&session.user_id, &room)?;
    Ok(Json(json!({"aliases": s.rooms.aliases_of(&room)?})))
}
