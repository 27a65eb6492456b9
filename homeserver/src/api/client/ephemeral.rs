//! Handlers for typing notifications, receipts, read markers and presence.

use std::time::Duration;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        extract::{Auth, Body, P, room_id, user_id},
    },
    ephemeral::receipts::{PRIVATE, PUBLIC},
    error::{Error, Result},
};

#[derive(Deserialize)]
pub struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

pub async fn typing(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, user)): P<(String, String)>,
    Body(body): Body<TypingBody>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    if user_id(&user)? != session.user_id {
        return Err(Error::forbidden("you can only set your own typing state"));
    }
    s.typing
        .set(
            &session.user_id,
            &room,
            body.typing,
            body.timeout.map(Duration::from_millis),
        )
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct ReceiptBody {
    thread_id: Option<String>,
}

pub async fn receipt(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, kind, event_id)): P<(String, String, String)>,
    Body(body): Body<ReceiptBody>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    if kind == "m.fully_read" {
        if body.thread_id.is_some() {
            return Err(Error::invalid_param("m.fully_read cannot be threaded"));
        }
        set_fully_read(&s, &session.user_id, &room, &event_id).await?;
    } else {
        s.receipts
            .set(
                &session.user_id,
                &room,
                &kind,
                &event_id,
                body.thread_id.as_deref(),
            )
            .await?;
    }
    Ok(Json(json!({})))
}

async fn set_fully_read(
    s: &AppState,
    user: &ruma::UserId,
    room: &ruma::RoomId,
    event_id: &str,
) -> Result<()> {
    if s.rooms.membership_of(room, user)?.as_deref() != Some("join") {
        return Err(Error::forbidden("you are not in this room"));
    }
    if s.rooms.event(event_id)?.is_none_or(|e| e.room_id != room) {
        return Err(Error::not_found("no such event in this room"));
    }
    s.account_data
        .set(
            user,
            Some(room),
            "m.fully_read",
            json!({"event_id": event_id}),
        )
        .await
}

#[derive(Deserialize)]
pub struct ReadMarkersBody {
    #[serde(rename = "m.fully_read")]
    fully_read: Option<String>,
    #[serde(rename = "m.read")]
    read: Option<String>,
    #[serde(rename = "m.read.private")]
    read_private: Option<String>,
}

pub async fn read_markers(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Body(body): Body<ReadMarkersBody>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    if let Some(id) = &body.fully_read {
        set_fully_read(&s, &session.user_id, &room, id).await?;
    }
    if let Some(id) = &body.read {
        s.receipts
            .set(&session.user_id, &room, PUBLIC, id, None)
            .await?;
    }
    if let Some(id) = &body.read_private {
        s.receipts
            .set(&session.user_id, &room, PRIVATE, id, None)
            .await?;
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct PresenceBody {
    presence: String,
    #[serde(default, deserialize_with = "present")]
    status_msg: Option<Option<String>>,
}

/// Tells "absent" (keep the old message) from `null` (clear it).
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

pub async fn put_presence(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(user): P<String>,
    Body(body): Body<PresenceBody>,
) -> Result<Json<Value>> {
    if user_id(&user)? != session.user_id {
        return Err(Error::forbidden("you can only set your own presence"));
    }
    if body
        .status_msg
        .as_ref()
        .and_then(|m| m.as_ref())
        .is_some_and(|m| m.len() > 1024)
    {
        return Err(Error::invalid_param("status_msg is limited to 1024 bytes"));
    }
    s.presence
        .set(&session.user_id, &body.presence, body.status_msg)
        .await?;
    Ok(Json(json!({})))
}

pub async fn get_presence(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(user): P<String>,
) -> Result<Json<Value>> {
    let user = user_id(&user)?;
    if s.profiles.get(&user)?.is_none() {
        return Err(Error::not_found("no such user"));
    }
    if !s.rooms.shares_room(&session.user_id, &user)? {
        return Err(Error::forbidden("you do not share a room with this user"));
    }
    let mut c = s.presence.content_for(&session.user_id, &user)?;
    if let Some(o) = c.as_object_mut() {
        o.remove("displayname");
        o.remove("avatar_url");
    }
    Ok(Json(c))
}
